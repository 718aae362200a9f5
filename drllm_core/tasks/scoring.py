"""Score examples on the path engine, under any layer path, batched.

Multiple choice by log-likelihood packs a question and all its choices into one row: the context is run once
and every choice attends to it and to itself (segment ids), so a 4-choice question costs one context plus
four short continuations instead of four full prompts. Letter and math scorers generate greedily with the
KV-cached engine and read the answer from the text (math through math-verify).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from drllm_core.engine import HiddenState, PathEngine
from drllm_core.tasks.prompts import Prompt, TaskSettings
from drllm_core.tasks.schema import Example, letter


@dataclass
class PackedQuestion:
    """One question and all its choices as a single token row."""

    input_ids: list[int]
    segment_ids: list[int]  # 0 context, k+1 choice k
    position_ids: list[int]  # every choice continues the context's positions
    predict_at: list[int]  # row index whose logits predict targets[i]
    targets: list[int]
    target_choice: list[int]
    char_lengths: list[int]  # per choice, for acc_norm

    @property
    def num_choices(self) -> int:
        return len(self.char_lengths)


def pack_choices(tokenizer, prompt: Prompt, add_special_tokens: bool = True) -> PackedQuestion:
    context = tokenizer(prompt.context, add_special_tokens=add_special_tokens).input_ids
    ids, segments, positions = list(context), [0] * len(context), list(range(len(context)))
    predict_at, targets, target_choice = [], [], []
    for choice, text in enumerate(prompt.continuations):
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        if not tokens:
            raise ValueError(f"choice {choice} ({text!r}) tokenizes to nothing")
        previous = len(context) - 1
        for offset, token in enumerate(tokens):
            predict_at.append(previous)
            targets.append(token)
            target_choice.append(choice)
            previous = len(ids)
            ids.append(token)
            segments.append(choice + 1)
            positions.append(len(context) + offset)
    return PackedQuestion(
        ids, segments, positions, predict_at, targets, target_choice, [len(t) for t in prompt.continuations]
    )


@dataclass
class PackedBatch:
    """Right-padded tensors for several packed questions (one per row)."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    segment_ids: Tensor
    predict_at: Tensor  # (B, N)
    targets: Tensor  # (B, N)
    target_choice: Tensor  # (B, N), -1 for padding
    num_choices: int

    @classmethod
    def collate(cls, packs: list[PackedQuestion], pad_id: int) -> PackedBatch:
        width = max(len(p.input_ids) for p in packs)
        n = max(len(p.targets) for p in packs)

        def pad(rows, length, value):
            return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)

        return cls(
            input_ids=pad([p.input_ids for p in packs], width, pad_id),
            attention_mask=pad([[1] * len(p.input_ids) for p in packs], width, 0),
            position_ids=pad([p.position_ids for p in packs], width, 0),
            segment_ids=pad([p.segment_ids for p in packs], width, 0),
            predict_at=pad([p.predict_at for p in packs], n, 0),
            targets=pad([p.targets for p in packs], n, 0),
            target_choice=pad([p.target_choice for p in packs], n, -1),
            num_choices=max(p.num_choices for p in packs),
        )

    def repeat(self, rows: int) -> PackedBatch:
        """The same single question on `rows` rows (several paths for one question)."""
        assert self.input_ids.shape[0] == 1, "repeat expects a batch of one question"
        return PackedBatch(*(t.expand(rows, -1) for t in self._tensors()), num_choices=self.num_choices)

    def _tensors(self):
        return (
            self.input_ids,
            self.attention_mask,
            self.position_ids,
            self.segment_ids,
            self.predict_at,
            self.targets,
            self.target_choice,
        )

    def prompt_mask(self) -> Tensor:
        """(B, T) True on the question context: what a router reads (never the answer choices)."""
        return (self.segment_ids == 0) & self.attention_mask.bool()

    def embed(self, engine: PathEngine) -> HiddenState:
        return engine.embed(self.input_ids, self.attention_mask, self.position_ids, self.segment_ids)


def choice_loglikelihoods(engine: PathEngine, state: HiddenState, batch: PackedBatch) -> Tensor:
    """(B, C) summed log-probabilities of each choice; -inf where a row has fewer choices."""
    logits = engine.logits(state, batch.predict_at).float()  # (B, N, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = batch.targets.to(logprobs.device)
    token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, N)
    choice = batch.target_choice.to(logprobs.device)
    slots = torch.where(choice < 0, batch.num_choices, choice)  # padding goes to a spare slot
    sums = torch.zeros(token_lp.shape[0], batch.num_choices + 1, device=logprobs.device)
    sums.scatter_add_(1, slots, token_lp.masked_fill(choice < 0, 0.0))
    counted = torch.zeros_like(sums).scatter_add_(1, slots, (choice >= 0).float())
    return sums[:, :-1].masked_fill(counted[:, :-1] == 0, -math.inf).cpu()


@dataclass
class Decision:
    """The outcome of one example under one path."""

    prediction: str  # chosen letter (multiple choice) or extracted answer text
    correct: bool
    margin: float  # gold score minus best wrong score (multiple choice); nan for generation
    path: tuple[int, ...] | None = None  # the layer counts it was made under


def decide_choice(scores: Tensor, example: Example, settings: TaskSettings) -> Decision:
    """Pick a choice from per-choice log-likelihoods (acc) or per-character ones (acc_norm)."""
    scores = scores[: len(example.choices)].double()
    if settings.metric == "acc_norm":
        lengths = torch.tensor([max(1, len(c) + 1) for c in example.choices], dtype=torch.float64)
        scores = scores / lengths
    predicted = int(scores.argmax())
    others = torch.cat([scores[: example.answer_index], scores[example.answer_index + 1 :]])
    margin = float(scores[example.answer_index] - others.max())
    return Decision(letter(predicted), predicted == example.answer_index, margin)


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
