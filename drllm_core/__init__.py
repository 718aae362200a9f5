"""drllm_core: the library behind the drllm pipeline (Dr.LLM dynamic layer routing).

One concept per module. Paths and their constraints (paths), loading a model (models), running it along
paths (engine); tasks, prompts and scoring (tasks/); the path search (search, rewards, search_runner,
distributed) and its labels (labels, label_checks); routers (routers, routing, features, training); routed
inference (inference); baselines, calibration and evaluation; MLflow (tracking, mlflow_model, promotion);
the report. docs/method.md describes the method these implement.
"""
