"""Evaluation results summarised and compared: per configuration, set and task, accuracy with its 95% Wilson
interval, blocks per token, agreement with vanilla and the KL divergence from it; and paired comparisons of
two configurations on the questions both answered (drllm_core.stats). Plain pandas: the report reads them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from drllm_core.stats import choice_kl, paired_comparison, wilson_interval


def with_agreement(results: pd.DataFrame) -> pd.DataFrame:
    """The results with, per row, whether the prediction is the vanilla model's on the same question
    (`agrees`) and the KL divergence of its choice distribution from vanilla's (`kl`, NaN for generated
    answers): faithfulness, which at equal blocks tells a good skip from a lucky one with far less noise than
    accuracy on a near-chance model."""
    vanilla = results[results["config"] == "vanilla"].set_index(["set", "example_id"])
    keys = list(zip(results["set"], results["example_id"], strict=True))
    reference = vanilla.reindex(keys)
    frame = results.copy()
    frame["agrees"] = results["prediction"].to_numpy() == reference["prediction"].to_numpy()
    frame["kl"] = [  # NaN where vanilla did not answer the question (no reference scores)
        choice_kl(v, c) if isinstance(v, list | np.ndarray) else math.nan
        for v, c in zip(reference["scores"], results["scores"], strict=True)
    ]
    return frame


def summarize(results: pd.DataFrame, num_layers: int) -> pd.DataFrame:
    """Per configuration x set x task (and task 'all'): accuracy with its 95% Wilson interval, blocks per
    token, blocks saved, the number of distinct paths, and agreement with vanilla (95% Wilson interval) and
    the mean KL divergence from it (see with_agreement)."""
    rows = []
    for (config, set_name), frame in with_agreement(results).groupby(["config", "set"], sort=False):
        for task, part in [("all", frame), *frame.groupby("task", sort=True)]:
            correct, n = int(part["correct"].sum()), len(part)
            low, high = wilson_interval(correct, n)
            blocks = float(part["blocks"].mean())
            rows.append(
                {
                    "config": config,
                    "set": set_name,
                    "task": task,
                    "n": n,
                    "accuracy": correct / n,
                    "ci_low": low,
                    "ci_high": high,
                    "blocks_per_token": blocks,
                    "blocks_saved": num_layers - blocks,
                    "saved_pct": 100 * (1 - blocks / num_layers),
                    "distinct_paths": int(part["path"].map(tuple).nunique()),
                    "agreement": float(part["agrees"].mean()),
                    "agreement_low": wilson_interval(int(part["agrees"].sum()), n)[0],
                    "agreement_high": wilson_interval(int(part["agrees"].sum()), n)[1],
                    "kl_from_vanilla": float(part["kl"].mean()) if part["kl"].notna().any() else math.nan,
                }
            )
    return pd.DataFrame(rows)


def compare(results: pd.DataFrame, config: str, reference: str, set_name: str) -> dict | None:
    """Paired comparison of two configurations on the questions both answered (None: no shared question):
    accuracy, and agreement with vanilla (`agreement_*`; against vanilla itself it is the share changed)."""
    frame = with_agreement(results)

    def column(name: str, field: str) -> pd.Series:
        chosen = frame[(frame["config"] == name) & (frame["set"] == set_name)]
        return chosen.set_index("example_id")[field]

    a, b = column(config, "correct"), column(reference, "correct")
    shared = a.index.intersection(b.index)
    if shared.empty:
        return None
    agreement = paired_comparison(
        column(config, "agrees").loc[shared].tolist(), column(reference, "agrees").loc[shared].tolist()
    )
    return {
        "config": config,
        "reference": reference,
        "set": set_name,
        **paired_comparison(a.loc[shared].tolist(), b.loc[shared].tolist()),
        **{f"agreement_{k}": v for k, v in agreement.items() if k != "n"},
    }


def comparisons(
    results: pd.DataFrame,
    references: Sequence[str],
    set_names: Sequence[str],
    challengers: Sequence[str] = ("drllm",),
) -> list[dict]:
    """Every configuration against vanilla, and each of `challengers` against each of `references` (but
    itself), on each set both answered."""
    configs = list(dict.fromkeys(results["config"]))
    pairs = [(c, "vanilla") for c in configs if c != "vanilla"]
    pairs += [(c, r) for c in challengers if c in configs for r in references if r != c]
    found = (compare(results, a, b, s) for a, b in pairs for s in set_names)
    return [c for c in found if c is not None]
