"""Tasks: where benchmark data comes from (registry, sources), how it is prompted (prompts) and how an answer
is scored under a layer path (packing, answers, scorer). The prepared-set schema is in schema."""
