"""Tasks: where benchmark data comes from (registry, sources), how it is prompted (prompts) and how an answer
is scored under a layer path (scoring, evaluator). The prepared-set schema is in schema."""
