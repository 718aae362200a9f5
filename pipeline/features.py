"""Stage `features`: the router inputs along each kept example's labelled path, computed once.

Reads data/paths/<labels>/paths.parquet and the search set; writes data/features/<labels>/features.safetensors
(features (N, L, W, D) bf16, window_mask (N, W), labels (N, L)) and meta.json (example ids, model, windows).
Training then needs no forward pass of the base model. Reads params `model`, `tasks`, `train.windows`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from drllm_core import io
from drllm_core.engine import PathEngine
from drllm_core.models import ModelSpec, load_model, weights_fingerprint, weights_sample
from drllm_core.tasks.evaluator import ExampleScorer, examples_from_frame
from drllm_core.training import build_features
from pipeline.common import load_params, log, parser, run, section


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--paths", required=True, help="search output folder, e.g. data/paths/mcts")
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", required=True, help="e.g. data/features/mcts")
    args = args.parse_args()
    params = load_params(args.params)
    windows = int(section(params, "train")["windows"])
    paths = pd.read_parquet(Path(args.paths) / "paths.parquet")
    search = pd.read_parquet(Path(args.prepared) / "search.parquet").set_index("example_id")
    examples = examples_from_frame(search.loc[list(paths["example_id"])].reset_index())
    labels = torch.tensor([list(v) for v in paths["labels"]], dtype=torch.long)
    loaded = load_model(ModelSpec.from_params(section(params, "model")))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks"))
    start = time.perf_counter()
    features, window_mask = build_features(scorer, examples, labels, windows)
    seconds = time.perf_counter() - start
    with io.atomic_dir(args.out) as tmp:
        save_file(
            {"features": features, "window_mask": window_mask, "labels": labels}, tmp / "features.safetensors"
        )
        io.write_json(
            tmp / "meta.json",
            {
                "example_ids": list(paths["example_id"]),
                "model": loaded.name,
                "fingerprint": weights_fingerprint(loaded.model),
                "weights_sample": weights_sample(loaded.model),
                "windows": windows,
                "shape": list(features.shape),
                "seconds": seconds,
            },
        )
    log.info(
        "features %s for %d examples in %.1f s -> %s", tuple(features.shape), len(examples), seconds, args.out
    )


if __name__ == "__main__":
    run(main)
