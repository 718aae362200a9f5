"""The MLflow pyfunc of a router folder ("models from code"): loads the base model and the routers, and
answers prompts with routed greedy generation (drllm_core.inference.RoutedModel.generate).

Input: a DataFrame with a `prompt` column and, optionally, `choices` (a list of answers per row): a row with
choices is a multiple-choice question, scored as `evaluate` scores one (drllm_core.inference.RoutedModel.choose),
the others are answered by routed greedy generation. Output per row: `text` (generated; empty for a question
with choices), `choice` (the chosen index, -1 for generation), `scores` (per choice), `path` (per-layer
counts) and `blocks`. The folder says how to route (its calibrated knob, the path limits, the prompt format);
`params` at predict time may override `max_new_tokens`, `knob` and `chat_template`, and set how prompts are
batched for generation (`batch_size`, `group_by_path`: RoutedModel.generate). The model config holds the
base model's `model` params (dtype, device, cache folder) and the routers' content hash, which loading checks:
MLflow runs this file's code when a version loads, so only load versions from a store you trust.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RoutedLLM(PythonModel):
    def load_context(self, context):
        from drllm_core.inference import RoutedModel
        from drllm_core.models import ModelSpec, load_model
        from drllm_core.routers import RouterSet
        from drllm_core.routing import RouterMismatch, routers_hash

        folder = context.artifacts["routers"]
        settings = context.model_config or {}
        expected, found = settings.get("routers_hash"), routers_hash(folder)
        if expected != found:  # the version's routers were changed after registration: refuse them
            raise RouterMismatch(
                f"the routers of this version hash to {found}, not to {expected} as registered"
            )
        config = RouterSet.read_config(folder)
        model_params = settings.get("model") or {"spec": config.base_model}
        self.routed = RoutedModel.from_folder(load_model(ModelSpec.from_params(model_params)), folder)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        self.routed.knob = params.get("knob", self.routed.knob)  # checked: a ConfigError outside [-1, 1]
        prompts = [str(p) for p in model_input["prompt"]]
        choices = list(model_input["choices"]) if "choices" in model_input else [None] * len(prompts)
        asked = [i for i, c in enumerate(choices) if c is not None and len(c)]
        free = [i for i in range(len(prompts)) if i not in set(asked)]
        rows = [{}] * len(prompts)
        chosen = self.routed.choose([prompts[i] for i in asked], [list(choices[i]) for i in asked])
        for i, answer in zip(asked, chosen, strict=True):
            rows[i] = {
                "text": "",
                "choice": answer.choice,
                "scores": list(answer.scores),
                "path": list(answer.path),
                "blocks": answer.blocks,
            }
        generated = (
            self.routed.generate(
                [prompts[i] for i in free],
                int(params.get("max_new_tokens", 64)),
                params.get("chat_template"),
                batch_size=params.get("batch_size") or None,  # unset or 0: one batch
                group_by_path=bool(params.get("group_by_path", False)),
            )
            if free
            else []
        )
        for i, answer in zip(free, generated, strict=True):
            rows[i] = {
                "text": answer.text,
                "choice": -1,
                "scores": [],
                "path": list(answer.path),
                "blocks": answer.blocks,
            }
        return pd.DataFrame(rows, columns=["text", "choice", "scores", "path", "blocks"])


mlflow.models.set_model(RoutedLLM())
