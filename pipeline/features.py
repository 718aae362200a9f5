"""Stage `features`: the router inputs along each kept example's labelled path, computed once.

Reads data/paths/<labels>/paths.parquet and the search set; writes data/features/<labels>/features.safetensors
(features (N, L, W, D) bf16, window_mask (N, W), labels (N, L)) and meta.json (example ids, model, windows,
the prompt format). Training then needs no forward pass of the base model. Reads params `model`, `tasks`,
`train.windows` (and `runtime.batch_size`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from drllm_core import io
from drllm_core.engine import PathEngine
from drllm_core.features import build_features
from drllm_core.models import ModelSpec, load_model, weights_fingerprint, weights_sample
from drllm_core.runtime import Runtime
from drllm_core.tasks.prompts import checked_tasks
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.training import TrainConfig
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--paths", required=True, help="search output folder, e.g. data/paths/mcts")
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", required=True, help="e.g. data/features/mcts")
    args.add_argument("--timings", default=None, help="default: metrics/timings/features-<labels>.json")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    windows = TrainConfig.from_params(section(params, "train")).windows
    runtime = Runtime.from_params(params)
    paths = pd.read_parquet(Path(args.paths) / "paths.parquet")
    search = pd.read_parquet(Path(args.prepared) / "search.parquet").set_index("example_id")
    examples = examples_from_frame(search.loc[list(paths["example_id"])].reset_index())
    labels = torch.tensor([list(v) for v in paths["labels"]], dtype=torch.long)
    task_params = checked_tasks(params, io.read_json(Path(args.prepared) / "manifest.json"))
    loaded = load_model(ModelSpec.from_params(section(params, "model")))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, task_params)
    scorer.check_lengths(examples)
    start = time.perf_counter()
    features, window_mask = build_features(scorer, examples, labels, windows, runtime.batch_size)
    seconds = time.perf_counter() - start
    tensors = {"features": features, "window_mask": window_mask, "labels": labels}
    for column in ("costs", "keeps", "soft_labels"):  # skip-cost labels, soft labels
        if column in paths:
            tensors[column] = torch.tensor([list(v) for v in paths[column]], dtype=torch.float64)
    with io.atomic_dir(args.out) as tmp:
        save_file(tensors, tmp / "features.safetensors")
        io.write_json(
            tmp / "meta.json",
            {
                "example_ids": list(paths["example_id"]),
                "model": loaded.name,
                "fingerprint": weights_fingerprint(loaded.model),
                "weights_sample": weights_sample(loaded.model),
                "windows": windows,
                "tasks": task_params,
                "shape": list(features.shape),
            },
        )
    name = Path(args.out).name
    io.write_json(args.timings or f"metrics/timings/features-{name}.json", {"seconds": seconds})
    log.info(
        "features %s for %d examples in %.1f s -> %s", tuple(features.shape), len(examples), seconds, args.out
    )


if __name__ == "__main__":
    raise SystemExit(main())
