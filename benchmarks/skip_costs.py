"""Is where and how much to skip predictable from the prompt? `python -m benchmarks.skip_costs` (needs the
default pipeline's data/paths/singles and data/features/singles: `dvc repro features`).

The search's single skips tell, for every labelled search question and layer, whether skipping that layer
alone keeps vanilla's answer. Over `--splits` random splits, cost routers (drllm_core.training, as the
pipeline trains them) learn on the other questions and route `--held-out` of them at the threshold that
saves `--blocks` per question; beside them, on the same questions and as many blocks:

  static          the candidate that kept most training answers, skipped for every question (one block)
  random          per question 0 or 2 random skips among the 4 best candidates, one block on average
  shuffled        the cost router trained on labels shuffled across questions (the pipeline's control)
  routers         the cost router

Reported per policy: blocks saved and the share of vanilla's answers changed, as the mean over the splits
with its range. A question with one skip is exact; one with two counts as changed when either skip alone
changes the answer (an approximation: the pipeline's evaluate scores the real paths). Held-out questions are
search questions, never a test set.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from benchmarks.common import command_line, print_table, write_json
from drllm_core.io import read_yaml
from drllm_core.routers import window_mean
from drllm_core.routing import RouterConfig, cost_decisions, decision_layer
from drllm_core.training import TrainConfig, read_features, shuffled, train_cost_router


def plans_at(predicted: np.ndarray, candidates: list[int], blocks: float, max_skips: int) -> list[list[int]]:
    """Each question's skips under the threshold at which the questions skip `blocks` layers on average:
    every policy compared at the same blocks saved."""
    low, high = float(predicted.min()) - 1, float(predicted.max()) + 1
    for _ in range(60):
        middle = (low + high) / 2
        skips = np.minimum((predicted <= middle).sum(1), max_skips).mean()
        low, high = (middle, high) if skips < blocks else (low, middle)
    return cost_decisions(predicted.tolist(), candidates, high, max_skips)


def changed_share(keeps: np.ndarray, plans: list[list[int]]) -> float:
    """Share of questions whose answer a plan changes: any of its skips changes it alone (see the docstring)."""
    return float(np.mean([1 - np.prod(keeps[row, plan]) if plan else 0.0 for row, plan in enumerate(plans)]))


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", default="data/features/singles")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--train", default="150,300,all", help="training questions per split (all: the rest)")
    parser.add_argument("--blocks", type=float, default=1.0, help="blocks saved per question, every policy")
    args = parser.parse_args(argv)
    train = TrainConfig.from_params(read_yaml(args.params)["train"])
    tensors, meta = read_features(args.features, train.windows)
    if "costs" not in tensors:
        parser.error(f"{args.features} holds no skip costs: run the singles search and its features stage")
    features, mask = tensors["features"], tensors["window_mask"]
    keeps = tensors["keeps"].numpy()
    count, layers = keeps.shape
    layer = decision_layer(train.decision_depth, layers)
    base = RouterConfig(layers, features.shape[-1], kind="costs", decision_layer=layer, windows=train.windows)
    config = replace(train, val_fraction=1 / count)  # every training question trains
    pooled = window_mean(features[:, layer].double(), mask).float()  # what the routers read, every question
    sizes = [count - args.held_out if s == "all" else int(s) for s in args.train.split(",")]
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for split in range(args.splits):
        order = np.random.default_rng(split).permutation(count)
        held = order[: args.held_out]
        for size in sizes:
            chosen = np.sort(order[args.held_out : args.held_out + size])
            part = {name: value[chosen] for name, value in tensors.items()}
            policies = {}
            for name, labels in (("routers", part), ("shuffled", shuffled(part, split))):
                result = train_cost_router(
                    labels["features"], labels["window_mask"], labels["costs"], labels["keeps"], base, config
                )
                cost = result.routers.cost.eval()
                candidates = result.routers.config.candidates  # by mean kept answers: shuffling keeps them
                with torch.no_grad():
                    predicted = cost(pooled[held]).numpy()
                policies[name] = plans_at(predicted, candidates, args.blocks, train.max_skips)
            kept = np.nanmean(keeps[chosen][:, candidates], 0)
            ranked = [candidates[i] for i in np.argsort(-kept, kind="stable")]
            policies["static"] = [[ranked[0]]] * len(held)
            draw = np.random.default_rng(1000 + split)
            policies["random"] = [
                sorted(draw.choice(ranked[:4], 2, replace=False).tolist()) if draw.random() < 0.5 else []
                for _ in held
            ]
            for name, plans in policies.items():
                saved = float(np.mean([len(p) for p in plans]))
                results.setdefault((size, name), []).append((saved, changed_share(keeps[held], plans)))
    rows = [
        {
            "train_questions": size,
            "policy": name,
            "blocks_saved": statistics.mean(s for s, _ in values),
            "answers_changed": statistics.mean(c for _, c in values),
            "changed_min_max": [round(min(c for _, c in values), 3), round(max(c for _, c in values), 3)],
        }
        for (size, name), values in results.items()
    ]
    print_table(
        f"Answers changed on {args.held_out} held-out search questions, {args.splits} splits ({meta['model']})",
        rows,
    )
    write_json("skip_costs", {"model": meta["model"], "args": vars(args), "rows": rows})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
