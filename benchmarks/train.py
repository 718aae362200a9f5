"""Router training cost: `python -m benchmarks.train` (needs data/paths/mcts from `dvc repro`).

Builds the feature cache for the default search labels (one frozen-model pass along each labelled path) and
trains the routers with the params.yaml settings, reporting wall time and peak memory of each step. Target:
training <= 2 minutes on this CPU.
"""

from __future__ import annotations

import argparse
import resource
import time

import pandas as pd
import torch

from benchmarks.common import print_table, write_json
from drllm_core.engine import PathEngine
from drllm_core.features import build_features
from drllm_core.io import read_yaml
from drllm_core.models import ModelSpec, load_model
from drllm_core.routing import RouterConfig
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.training import TrainConfig, train_routers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--paths", default="data/paths/mcts/paths.parquet")
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    config = TrainConfig.from_params(params["train"])
    loaded = load_model(ModelSpec.from_params(params["model"]))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks"))
    paths = pd.read_parquet(args.paths)
    search = pd.read_parquet("data/prepared/search.parquet").set_index("example_id")
    examples = examples_from_frame(search.loc[list(paths["example_id"])].reset_index())
    labels = torch.tensor([list(v) for v in paths["labels"]])
    before = peak_rss_mb()
    start = time.perf_counter()
    features, window_mask = build_features(scorer, examples, labels, config.windows)
    feature_seconds = time.perf_counter() - start
    after_features = peak_rss_mb()
    router_config = RouterConfig(
        loaded.num_layers, loaded.model.config.hidden_size, config.bottleneck, config.windows
    )
    start = time.perf_counter()
    result = train_routers(features, window_mask, labels, router_config, config)
    train_seconds = time.perf_counter() - start
    rows = [
        {
            "step": "feature cache",
            "examples": len(examples),
            "seconds": feature_seconds,
            "peak_rss_mb": after_features,
            "rss_growth_mb": after_features - before,
            "cache_mb": features.numel() * features.element_size() / 2**20,
        },
        {
            "step": f"train {config.epochs} epochs",
            "examples": result.train_examples,
            "seconds": train_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": peak_rss_mb() - after_features,
            "cache_mb": 0.0,
        },
    ]
    print(
        f"model {loaded.name}, {torch.get_num_threads()} threads; held-out macro-F1 {result.validation['macro_f1']:.3f} "
        f"(majority {result.baselines['majority']['macro_f1']:.3f}, prior {result.baselines['prior']['macro_f1']:.3f})"
    )
    print_table("Router training cost (target: training <= 120 s)", rows)
    write_json("train", {"model": loaded.name, "rows": rows, "val_macro_f1": result.validation["macro_f1"]})


if __name__ == "__main__":
    main()
