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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from drllm_core.errors import ConfigError
from drllm_core.paths import EXECUTE, LayerPath
from drllm_core.search import shortest_first

CLASS_NAMES = {0: "skip", 1: "execute", 2: "repeat"}
LABEL_RULES = ("shortest", "consensus")


@dataclass(frozen=True)
class LabelRule:
    """The `search.label_rule` and `search.consensus_share` params."""

    label_rule: str = "shortest"
    consensus_share: float = 0.7

    def __post_init__(self):
        if self.label_rule not in LABEL_RULES:
            raise ConfigError(f"unknown search.label_rule {self.label_rule!r}; use one of {LABEL_RULES}")
        if not 0.5 < self.consensus_share <= 1.0:
            raise ConfigError(
                f"search.consensus_share must lie in (0.5, 1], got {self.consensus_share}: a layer's class must be"
                " held by a majority of the correct paths"
            )


def consensus_counts(paths: list[LayerPath], share: float) -> tuple[int, ...]:
    """Per layer, the class at least `share` of the paths give it (a majority, so at most one), else execute."""
    counts = np.array([p.counts for p in paths])
    consensus = np.full(counts.shape[1], EXECUTE)
    for value in CLASS_NAMES:
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


def labelled(record: dict, rule: LabelRule) -> dict:
    """A search record with its label fields: kept, labels, order, blocks, blocks saved, margin, W->C."""
    kept = kept_path(record, rule)
    path, margin = kept if kept else (None, None)
    return {
        **record,
        "kept": path is not None,
        "labels": list(path.counts) if path else None,
        "order": path.order if path else None,
        "blocks": path.blocks if path else None,
        "blocks_saved": path.blocks_saved if path else None,
        "best_correct": path is not None,
        "best_margin": margin,
        "wrong_to_correct": path is not None and not record["default_correct"],
    }


def label_statistics(records: pd.DataFrame) -> dict:
    """Summary of search records (one row per searched example, kept or not)."""
    kept = records[records["kept"]]
    labels = np.concatenate([np.asarray(v) for v in kept["labels"]]) if len(kept) else np.array([], dtype=int)
    shares = {
        name: float((labels == value).mean()) if labels.size else 0.0 for value, name in CLASS_NAMES.items()
    }
    simulations = records["simulations"].sum()
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
        "layer_evaluations_per_example": float(records["layer_evaluations"].mean()) if len(records) else 0.0,
        "layer_evaluations_per_simulation": float(records["layer_evaluations"].sum() / simulations)
        if simulations
        else 0.0,
        "search_seconds": float(records["seconds"].sum()),
    }
