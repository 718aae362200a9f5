"""Path labels: statistics of a search's output (and, in validate, the checks they must pass)."""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASS_NAMES = {0: "skip", 1: "execute", 2: "repeat"}


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
