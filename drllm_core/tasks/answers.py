"""How an answer is read from a task's scores or generated text, and whether it is right.

Multiple choice: the choice with the highest (summed or per-character) log-likelihood, and its margin over the
best wrong one. Letter: a strict match of an option letter at the start of the reply. Math: the final answer,
compared numerically and symbolically with math-verify.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from drllm_core.tasks.prompts import TaskSettings
from drllm_core.tasks.schema import Example, letter


@dataclass
class Decision:
    """The outcome of one example under one path."""

    prediction: str  # chosen letter (multiple choice) or extracted answer text
    correct: bool
    margin: float  # gold score minus best wrong score (multiple choice); nan for generation
    path: tuple[int, ...] | None = None  # the layer counts it was made under
    scores: tuple[float, ...] = ()  # per choice, what the choice was picked by (multiple choice)
    lead: float = math.nan  # the chosen choice's score minus the runner-up's (multiple choice)


def decide_choice(scores: Tensor, example: Example, settings: TaskSettings) -> Decision:
    """Pick a choice from per-choice log-likelihoods (acc) or per-character ones (acc_norm)."""
    scores = scores[: len(example.choices)].double()
    if settings.metric == "acc_norm":
        lengths = torch.tensor([max(1, len(c) + 1) for c in example.choices], dtype=torch.float64)
        scores = scores / lengths
    return choice_decision(scores, example)


def choice_decision(scores: Tensor, example: Example) -> Decision:
    """The decision from per-choice scores as the metric compares them (Decision.scores: a stored decision's
    scores give it back)."""
    scores = scores.double()
    predicted = int(scores.argmax())
    others = torch.cat([scores[: example.answer_index], scores[example.answer_index + 1 :]])
    margin = float(scores[example.answer_index] - others.max())
    top = scores.topk(2).values
    values = tuple(float(v) for v in scores)
    return Decision(
        letter(predicted), predicted == example.answer_index, margin, None, values, float(top[0] - top[1])
    )


_LETTER = re.compile(r"^\s*\(?([A-Z])(?:[).:\s]|$)")


def decide_letter(text: str, example: Example) -> Decision:
    """Strict letter match: the reply must start with one option letter."""
    match = _LETTER.match(text)
    predicted = match.group(1) if match and ord(match.group(1)) - 65 < len(example.choices) else ""
    return Decision(predicted, predicted == letter(example.answer_index), math.nan)


def decide_math(text: str, example: Example) -> Decision:
    """Equivalence of the final answer (after the last '####' when present, else what math-verify finds,
    \\boxed{} first) with the reference, numerically or symbolically."""
    from math_verify import parse, verify  # heavy import (sympy): only where math is scored

    answer_text = text.rsplit("####", 1)[-1] if "####" in text else text
    gold = parse(f"${example.answer}$") or parse(example.answer)
    predicted = parse(answer_text)
    shown = str(predicted[-1]) if predicted else ""
    return Decision(shown, bool(predicted) and bool(gold) and verify(gold, predicted), math.nan)


def cut_at_stops(text: str, stops: tuple[str, ...]) -> str:
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text
