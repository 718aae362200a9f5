"""Path labels: which of the paths a search scored becomes an example's label, and statistics of the labels.

The search records every distinct path it scored with its reward. The label rule picks the kept path among
those with reward 1 (an example with none is dropped):
* `shortest` (the paper): the fewest blocks. On a small model that answers many questions right under most
  short paths, this labels skips that merely did not hurt that one question: the labels come out dense in
  skips spread over every layer, and routers learn how much to skip rather than where.
* `consensus`: the rewarded path closest (fewest differing layers) to the per-layer consensus of all
  rewarded paths, where a layer takes the class that at least `consensus_share` of them give it, else
  execute. It keeps the skips most correct paths agree on; a question robust to skipping anywhere gets few
  labels of skip, since its correct paths disagree on where.
The label is always a path the search scored with reward 1. Changing the rule does not rerun the search:
the checkpoint holds every scored path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from drllm_core.errors import ConfigError
from drllm_core.paths import CLASS_NAMES, EXECUTE, LayerPath
from drllm_core.stats import choice_kl

LABEL_RULES = ("shortest", "consensus", "soft", "skip_cost")


@dataclass(frozen=True)
class LabelRule:
    """The `search.label_rule` and `search.consensus_share` params."""

    label_rule: str = "shortest"
    consensus_share: float = 0.7
    soft_beta: float = 3.0  # soft: a rewarded path weighs exp(-soft_beta * blocks / L) (PoLar's length prior)

    def __post_init__(self):
        if self.label_rule not in LABEL_RULES:
            raise ConfigError(f"unknown search.label_rule {self.label_rule!r}; use one of {LABEL_RULES}")
        if not 0.5 < self.consensus_share <= 1.0:
            raise ConfigError(
                f"search.consensus_share must lie in (0.5, 1], got {self.consensus_share}: a layer's class must be"
                " held by a majority of the correct paths"
            )
        if self.soft_beta < 0:
            raise ConfigError(f"search.soft_beta must be at least 0, got {self.soft_beta}")


def shortest_first(path: LayerPath, margin: float, found: int) -> tuple:
    """Sort key of the paper's kept path: fewer blocks, then fewer distinct layers, then the larger margin,
    then the one found first. The search keeps its best path by it and the `shortest` rule labels by it."""
    return (path.blocks, path.distinct_layers(), -(0.0 if math.isnan(margin) else margin), found)


def consensus_counts(paths: list[LayerPath], share: float) -> tuple[int, ...]:
    """Per layer, the class at least `share` of the paths give it (a majority, so at most one), else execute."""
    counts = np.array([p.counts for p in paths])
    consensus = np.full(counts.shape[1], EXECUTE)
    for value in range(len(CLASS_NAMES)):
        consensus[(counts == value).mean(axis=0) >= share] = value
    return tuple(int(c) for c in consensus)


def kept_path(record: dict, rule: LabelRule) -> tuple[LayerPath, float] | None:
    """The label path of one search record and its margin, or None when no scored path has reward 1."""
    rewarded = [
        (found, LayerPath.from_counts(counts), margin)
        for found, (counts, reward, margin) in enumerate(
            zip(record["scored_labels"], record["scored_reward"], record["scored_margin"], strict=True)
        )
        if reward >= 1.0
    ]
    if not rewarded:
        return None

    consensus = rule.label_rule == "consensus"
    target = consensus_counts([path for _, path, _ in rewarded], rule.consensus_share) if consensus else None

    def rank(entry) -> tuple:
        found, path, margin = entry
        differing = sum(a != b for a, b in zip(path.counts, target, strict=True)) if consensus else 0
        return (differing, *shortest_first(path, margin, found))

    _, path, margin = min(rewarded, key=rank)
    return path, margin


def soft_labels(record: dict, rule: LabelRule) -> list[list[float]] | None:
    """Per layer, the class distribution over every rewarded path, each weighted by exp(-soft_beta * blocks
    / L) so shorter paths count more (PoLar trains on many paths this way); None when none is rewarded."""
    rewarded = [c for c, r in zip(record["scored_labels"], record["scored_reward"], strict=True) if r >= 1.0]
    if not rewarded:
        return None
    counts = np.asarray(rewarded)  # (P, L)
    weights = np.exp(-rule.soft_beta * counts.sum(1) / counts.shape[1])
    shares = np.stack([((counts == c) * weights[:, None]).sum(0) for c in range(len(CLASS_NAMES))], -1)
    return (shares / weights.sum()).tolist()


def skip_costs(record: dict) -> tuple[list[float], list[float]]:
    """Per layer, from the paths a search scored: what skipping that layer alone costs the default path's
    answer, as the KL divergence of the choice distribution from the default one, and whether the answer
    stays (1.0 or 0.0); NaN where the single skip was not scored (or, for the cost, the answer is generated)."""
    scored = dict(zip(map(tuple, record["scored_labels"]), range(len(record["scored_labels"])), strict=True))
    layers = record["num_layers"]
    default = scored[(EXECUTE,) * layers]
    reference = record["scored_scores"][default]
    costs, keeps = [math.nan] * layers, [math.nan] * layers
    for layer in range(layers):
        index = scored.get(tuple(0 if i == layer else EXECUTE for i in range(layers)))
        if index is None:
            continue
        keeps[layer] = float(record["scored_prediction"][index] == record["scored_prediction"][default])
        costs[layer] = choice_kl(reference, record["scored_scores"][index])
    return costs, keeps


def labelled(record: dict, rule: LabelRule) -> dict:
    """A search record with its label fields. Every rule gives `labels` (the path the router inputs are
    computed along), kept, order, blocks, blocks saved, margin and W->C; `soft` adds `soft_labels` and
    labels along the default path, `skip_cost` the per-layer `costs` and `keeps` along the default path
    (every question is kept: a cost is a label whatever the answer)."""
    default = LayerPath.default(record["num_layers"])
    if rule.label_rule == "skip_cost":
        costs, keeps = skip_costs(record)
        fields = {"costs": costs, "keeps": keeps}
        path, margin = default, record["default_margin"]
    elif rule.label_rule == "soft":
        soft = soft_labels(record, rule)
        fields = {"soft_labels": soft}
        path, margin = (default, record["default_margin"]) if soft is not None else (None, None)
    else:
        kept = kept_path(record, rule)
        fields = {}
        path, margin = kept if kept else (None, None)
    return {
        **record,
        **fields,
        "kept": path is not None,
        "labels": list(path.counts) if path else None,
        "order": path.order if path else None,
        "blocks": path.blocks if path else None,
        "blocks_saved": path.blocks_saved if path else None,
        "best_margin": margin,
        "wrong_to_correct": path is not None and not record["default_correct"] and _correct(record, path),
    }


def _correct(record: dict, path: LayerPath) -> bool:
    """Whether the search found `path` answering correctly (every kept path of the correct and margin
    rewards does; a faithful one keeps the default's answer, right or wrong)."""
    if "scored_correct" not in record:  # records of a search that did not record correctness
        return True
    index = [tuple(c) for c in record["scored_labels"]].index(path.counts)
    return bool(record["scored_correct"][index])


def scored_paths(records: pd.DataFrame) -> dict[str, dict[LayerPath, list[float]]]:
    """Per example id, every path its search scored, with the per-choice scores (none for a generated
    answer): what a static baseline chosen on the same questions reuses (PathRewards.seed)."""
    return {
        row.example_id: {
            LayerPath.from_counts(counts): list(scores)
            for counts, scores in zip(row.scored_labels, row.scored_scores, strict=True)
            if len(scores)
        }
        for row in records.itertuples()
    }


def label_statistics(records: pd.DataFrame) -> dict:
    """Summary of search records (one row per searched example, kept or not)."""
    kept = records[records["kept"]]
    labels = np.concatenate([np.asarray(v) for v in kept["labels"]]) if len(kept) else np.array([], dtype=int)
    shares = {
        name: float((labels == value).mean()) if labels.size else 0.0
        for value, name in enumerate(CLASS_NAMES)
    }
    return {
        "examples": len(records),
        "kept": len(kept),
        "dropped_no_correct_path": int((~records["kept"]).sum()),
        "kept_share": len(kept) / len(records) if len(records) else 0.0,
        "default_accuracy": float(records["default_correct"].mean()) if len(records) else 0.0,
        "wrong_to_correct": int(kept["wrong_to_correct"].sum()),
        "wrong_to_correct_share_of_kept": float(kept["wrong_to_correct"].mean()) if len(kept) else 0.0,
        "mean_blocks_saved": float(kept["blocks_saved"].mean()) if len(kept) else 0.0,
        "mean_blocks": float(kept["blocks"].mean()) if len(kept) else 0.0,
        "label_shares": shares,
        "simulations_per_example": float(records["simulations"].mean()) if len(records) else 0.0,
        "evaluations_per_example": float(records["evaluations"].mean()) if len(records) else 0.0,
    }
