"""The MLflow pyfunc for a router set ("models from code"): loads the base model and the routers, and answers
prompts with routed greedy generation (the same code path as drllm_core.inference.RoutedModel.generate).

Input: a DataFrame with a `prompt` column. Output: `text`, `path` (per-layer counts) and `blocks` per prompt.
Options in the model config: `max_new_tokens`, `knob` (register sets the calibrated one), `chat_template`;
`params` at predict time override them.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RoutedLLM(PythonModel):
    def load_context(self, context):
        from drllm_core.inference import RoutedModel
        from drllm_core.models import ModelSpec, load_model

        folder = context.artifacts["routers"]
        config = json.loads((Path(folder) / "config.json").read_text())
        self.options = {
            "max_new_tokens": 64,
            "knob": 0.0,
            "chat_template": True,
            **(context.model_config or {}),
        }
        model_params = self.options.pop("model", None) or {"spec": config["base_model"]}
        self.routed = RoutedModel.from_folder(load_model(ModelSpec.from_params(model_params)), folder)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        options = {**self.options, **(params or {})}
        self.routed.knob = float(options["knob"])
        answers = self.routed.generate(
            list(model_input["prompt"]), int(options["max_new_tokens"]), bool(options["chat_template"])
        )
        return pd.DataFrame(
            {
                "text": [a.text for a in answers],
                "path": [list(a.path) for a in answers],
                "blocks": [a.blocks for a in answers],
            }
        )


mlflow.models.set_model(RoutedLLM())
