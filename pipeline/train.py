"""Stage `train`: focal-loss routers on cached features, with the base model frozen (it is not even loaded).

Writes models/routers/<name>/ (routers.safetensors + config.json, with how they route: the search's path
limits and the features' prompt format), metrics/train/<name>.json (held-out metrics against the trivial
predictors) and plots/train/<name>/{history,confusion}.csv for `dvc plots`; its wall time and memory go to
metrics/timings/train-<name>.json. `--shuffle-labels` trains the control: each example gets another
example's labels (or skip costs). Class routers (the paper's, on path labels) or a cost router (on skip-cost
labels, search.label_rule: skip_cost), as the features hold. Reads params `model.spec`, `search.max_skip_run`,
`search.max_blocks` and `train`.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict
from pathlib import Path

from drllm_core import io, tracking
from drllm_core.paths import PathConstraints
from drllm_core.routing import RouterConfig, Routing, decision_layer
from drllm_core.training import TrainConfig, read_features, shuffled, train_on
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--features", required=True, help="e.g. data/features/mcts")
    args.add_argument(
        "--paths", required=True, help="the search output the labels came from, e.g. data/paths/mcts"
    )
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", required=True, help="e.g. models/routers/mcts")
    args.add_argument("--metrics", required=True, help="e.g. metrics/train/mcts.json")
    args.add_argument("--plots", required=True, help="e.g. plots/train/mcts")
    args.add_argument("--timings", default=None, help="default: metrics/timings/train-<name>.json")
    args.add_argument(
        "--shuffle-labels",
        default="false",
        choices=["true", "false"],
        help="true: the control, labels shuffled",
    )
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    train_params = section(params, "train")
    config = TrainConfig.from_params(train_params)
    constraints = PathConstraints.from_params(section(params, "search"))
    tracking.configure()  # an unreachable store stops the stage before it works, not after
    tensors, meta = read_features(args.features, config.windows)
    shuffle = args.shuffle_labels == "true"
    if shuffle:
        tensors = shuffled(tensors, config.seed)
    features = tensors["features"]
    kind = "costs" if "costs" in tensors else "classes"
    search_stats = io.read_json(Path(args.paths) / "stats.json")
    router_config = RouterConfig(
        num_layers=features.shape[1],
        hidden_size=features.shape[-1],
        bottleneck=config.bottleneck,
        windows=config.windows,
        base_model=section(params, "model")["spec"],
        base_model_name=meta["model"],
        base_fingerprint=meta["fingerprint"],
        base_sample=meta["weights_sample"],
        provenance={
            "data_manifest": io.read_json(Path(args.prepared) / "manifest.json")["sets"]["search"]["sha256"],
            "search": {k: v for k, v in search_stats.items() if k != "label_shares"},
            "label_shares": search_stats["label_shares"],
            "train": asdict(config),  # the training knobs only: adding a router set elsewhere changes nothing
            "shuffled_labels": shuffle,
        },
        routing=Routing(
            constraints.max_skip_run,
            constraints.max_blocks,
            meta["tasks"],
            max_skips=config.max_skips if kind == "costs" else None,
        ),
        kind=kind,
        decision_layer=decision_layer(config.decision_depth, features.shape[1]),
    )
    start = time.perf_counter()
    result = train_on(tensors, router_config, config)
    seconds = time.perf_counter() - start
    result.routers.save(args.out)
    metrics = result.metrics()
    io.write_json(args.metrics, metrics)
    io.write_csv(Path(args.plots) / "history.csv", result.history)
    io.write_csv(Path(args.plots) / "confusion.csv", result.confusion_rows())
    name = Path(args.out).name
    timings = {
        "train_seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    io.write_json(args.timings or f"metrics/timings/train-{name}.json", timings)
    tracking.log_stage(
        "train",
        {"train": train_params},
        {**metrics, **timings},
        {"drllm.routers": name},
        name=f"train-{name}",
        history=result.history,
        artifacts={"validation_metrics.json": metrics},
    )
    log.info(
        "routers %s (%s): %d train / %d held-out examples in %.1f s; %s",
        name,
        kind,
        result.train_examples,
        result.val_examples,
        seconds,
        result.summary(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
