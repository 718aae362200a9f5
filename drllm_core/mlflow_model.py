"""The MLflow pyfunc for a router set ("models from code"): loads the base model and the routers, and answers
prompts with routed greedy generation (the same code path as drllm_core.inference.RoutedModel.generate).

Input: a DataFrame with a `prompt` column. Output: `text`, `path` (per-layer counts) and `blocks` per prompt.
Options in the model config: `max_new_tokens`, and what register sets (drllm_core.tracking.Serving): `knob`
and `max_skip_run` (the operating point `evaluate` measured) and `chat_template` (`tasks.defaults`: the
default prompt format, the one the default routers were trained on). `params` at predict time override `max_new_tokens`, `knob` and `chat_template`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RoutedLLM(PythonModel):
    def load_context(self, context):
        from drllm_core.inference import RoutedModel
        from drllm_core.models import ModelSpec, load_model
        from drllm_core.tracking import Serving

        folder = context.artifacts["routers"]
        config = json.loads((Path(folder) / "config.json").read_text())
        self.options = {"max_new_tokens": 64, **asdict(Serving()), **(context.model_config or {})}
        model_params = self.options.pop("model", None) or {"spec": config["base_model"]}
        self.routed = RoutedModel.from_folder(
            load_model(ModelSpec.from_params(model_params)),
            folder,
            max_skip_run=self.options.pop("max_skip_run"),
        )

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
