"""Router training cost: `python -m benchmarks.train` (needs the default pipeline's data/features/singles:
`dvc repro features`).

Trains the routers as the train stage does (params.yaml `train`), on the real labels and on the shuffled
control, `--repeats` times each, and reports the median wall time, its range and the peak memory. The base
model is not loaded: training reads the cached features only. Target: training <= 2 minutes on this CPU.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from benchmarks.common import command_line, print_table, write_json
from drllm_core.io import read_yaml
from drllm_core.routing import RouterConfig, decision_layer
from drllm_core.training import TrainConfig, read_features, shuffled, train_on


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", default="data/features/singles")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    config = TrainConfig.from_params(read_yaml(args.params)["train"])
    tensors, meta = read_features(args.features, config.windows)
    features = tensors["features"]
    kind = "costs" if "costs" in tensors else "classes"
    router_config = RouterConfig(
        features.shape[1],
        features.shape[-1],
        config.bottleneck,
        config.windows,
        kind=kind,
        decision_layer=decision_layer(config.decision_depth, features.shape[1]),
    )
    rows = []
    for label, inputs in [("real labels", tensors), ("shuffled labels", shuffled(tensors, config.seed))]:
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = train_on(inputs, router_config, config)
            seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "routers": f"{kind}, {label}",
                "examples": result.train_examples + result.val_examples,
                "median_seconds": statistics.median(seconds),
                "min_seconds": min(seconds),
                "max_seconds": max(seconds),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    print(f"model {meta['model']}, features {tuple(features.shape)}, {torch.get_num_threads()} threads")
    print_table("Router training cost (target: training <= 120 s)", rows)
    write_json("train", {"model": meta["model"], "rows": rows})


if __name__ == "__main__":
    main()
