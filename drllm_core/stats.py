"""Small statistics for honest comparisons: intervals for accuracies and paired tests on the same questions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

# The headline figures of one configuration (per set, or per task) in metrics/eval.json: what the report reads.
SCORE_COLUMNS = ("n", "accuracy", "ci_low", "ci_high", "blocks_per_token", "saved_pct")


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (well-behaved near 0 and 1, unlike the normal approximation)."""
    if total == 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_comparison(correct_a, correct_b, confidence: float = 0.95) -> dict:
    """Compare two configurations on the same questions (a minus b).

    McNemar's exact test on the discordant pairs (a_only: a right and b wrong, b_only: the reverse) and a
    Wald interval for the paired difference of accuracies. `significant` means the p-value is below
    1 - confidence; a difference inside the noise is reported as such."""
    pairs = list(zip(correct_a, correct_b, strict=True))
    n = len(pairs)
    a_only = sum(1 for a, b in pairs if a and not b)
    b_only = sum(1 for a, b in pairs if b and not a)
    difference = (a_only - b_only) / n if n else math.nan
    discordant = a_only + b_only
    p_value = stats.binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    z = stats.norm.ppf(0.5 + confidence / 2)
    se = math.sqrt(max(discordant - (a_only - b_only) ** 2 / n, 0.0)) / n if n else math.nan
    return {
        "n": n,
        "difference": difference,
        "ci_low": difference - z * se,
        "ci_high": difference + z * se,
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "mcnemar_p": float(p_value),
        "significant": bool(p_value < 1 - confidence),
    }


def choice_kl(reference: Sequence[float], scores: Sequence[float]) -> float:
    """KL divergence of the choice distribution of `scores` from that of `reference` (per-choice scores,
    softmaxed; probabilities clipped at 1e-12 so a choice one path rules out stays finite): how far a skip
    moves the model's answer, a label (drllm_core.labels) and a faithfulness measure (drllm_core.comparison)
    alike. NaN when either has no scores (a generated answer)."""
    if len(reference) == 0 or len(scores) == 0:
        return math.nan
    p, q = (np.exp(np.asarray(x, np.float64) - np.max(x)) for x in (reference, scores))
    p, q = np.clip(p / p.sum(), 1e-12, 1.0), np.clip(q / q.sum(), 1e-12, 1.0)
    return float(max(0.0, np.sum(p * (np.log(p) - np.log(q)))))
