"""The pipeline stages: one thin script per DVC stage over drllm_core (dvc.yaml runs them)."""
