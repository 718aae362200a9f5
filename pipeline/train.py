"""Stage `train`: focal-loss routers on cached features, with the base model frozen (it is not even loaded).

Writes models/routers/<name>/ (routers.safetensors + config.json), metrics/train/<name>.json (final
validation metrics, the trivial predictors' metrics, the history) and plots/train/<name>/{history,confusion}.csv
for `dvc plots`. `--shuffle-labels` trains the control: each example gets another example's label vector.
Reads params `model` (spec, recorded with the routers) and `train`.
"""

from __future__ import annotations

import csv
import resource
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from drllm_core import io, tracking
from drllm_core.routers import RouterConfig
from drllm_core.training import TrainConfig, train_routers
from pipeline.common import load_params, log, parser, run, section


def write_csv(path: Path, rows: list[dict]) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)

    io.write_with(path, writer)


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--features", required=True, help="e.g. data/features/mcts")
    args.add_argument(
        "--paths", required=True, help="the search output the labels came from, e.g. data/paths/mcts"
    )
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", required=True, help="e.g. models/routers/mcts")
    args.add_argument("--metrics", required=True, help="e.g. metrics/train/mcts.json")
    args.add_argument("--plots", required=True, help="e.g. plots/train/mcts")
    args.add_argument(
        "--shuffle-labels",
        default="false",
        choices=["true", "false"],
        help="true: the control, labels shuffled across examples",
    )
    args = args.parse_args()
    params = load_params(args.params)
    train_params = section(params, "train")
    config = TrainConfig.from_params(train_params)
    tensors = load_file(Path(args.features) / "features.safetensors")
    meta = io.read_json(Path(args.features) / "meta.json")
    labels = tensors["labels"]
    shuffle = args.shuffle_labels == "true"
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))]
    features, window_mask = tensors["features"], tensors["window_mask"]
    search_stats = io.read_json(Path(args.paths) / "stats.json")
    router_config = RouterConfig(
        num_layers=features.shape[1],
        hidden_size=features.shape[-1],
        bottleneck=config.bottleneck,
        windows=config.windows,
        base_model=section(params, "model")["spec"],
        base_model_name=meta["model"],
        base_fingerprint=meta["fingerprint"],
        base_sample=meta.get("weights_sample", []),  # features from before samples: the fingerprint alone
        provenance={
            "data_manifest": io.read_json(Path(args.prepared) / "manifest.json")["sets"]["search"]["sha256"],
            # no timings: the routers' content hash (registry versions, evaluation keys) must not change
            # when a rerun finds the same labels at another speed
            "search": {
                k: v for k, v in search_stats.items() if k != "label_shares" and not k.endswith("_seconds")
            },
            "label_shares": search_stats.get("label_shares"),
            # the training knobs only: adding a router set elsewhere changes nothing here
            "train": asdict(config),
            "shuffled_labels": shuffle,
        },
    )
    start = time.perf_counter()
    result = train_routers(features, window_mask, labels, router_config, config)
    seconds = time.perf_counter() - start
    result.routers.save(args.out)
    validation, baselines = result.validation, result.baselines
    metrics = {
        "train_seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_examples": result.train_examples,
        "val_examples": result.val_examples,
        "val_macro_f1": validation["macro_f1"],
        "val_accuracy": validation["accuracy"],
        "majority_macro_f1": baselines["majority"]["macro_f1"],
        "majority_accuracy": baselines["majority"]["accuracy"],
        "prior_macro_f1": baselines["prior"]["macro_f1"],
        "prior_accuracy": baselines["prior"]["accuracy"],
        "beats_trivial_macro_f1": validation["macro_f1"] > max(b["macro_f1"] for b in baselines.values()),
        "class_weights": result.class_weights,
        "validation": validation,
        "baselines": baselines,
    }
    io.write_json(args.metrics, metrics)
    write_csv(Path(args.plots) / "history.csv", result.history)
    confusion = validation["confusion"]
    write_csv(
        Path(args.plots) / "confusion.csv",
        [
            {"actual": actual, "predicted": predicted}
            for a, actual in enumerate(("skip", "execute", "repeat"))
            for p, predicted in enumerate(("skip", "execute", "repeat"))
            for _ in range(confusion[a][p])
        ]
        or [{"actual": "", "predicted": ""}],
    )
    name = Path(args.out).name
    with tracking.stage_run("train", {"train": train_params}, {"drllm.routers": name}, name=f"train-{name}"):
        import mlflow

        for row in result.history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float | bool)})
        mlflow.log_dict(validation, "validation_metrics.json")
    log.info(
        "routers %s: %d train / %d held-out examples in %.1f s; held-out macro-F1 %.3f (majority %.3f, prior %.3f), "
        "accuracy %.3f (majority %.3f)",
        name,
        result.train_examples,
        result.val_examples,
        seconds,
        validation["macro_f1"],
        baselines["majority"]["macro_f1"],
        baselines["prior"]["macro_f1"],
        validation["accuracy"],
        baselines["majority"]["accuracy"],
    )


if __name__ == "__main__":
    run(main)
