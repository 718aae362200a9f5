"""drllm_core: the library behind the drllm pipeline (Dr.LLM dynamic layer routing).

Modules, one concept each: models (loading), paths (the LayerPath type), engine (running a model along paths).
"""
