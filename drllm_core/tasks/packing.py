"""Multiple choice packed into one row per question, and the choices' log-likelihoods under any path.

The context is run once and every choice attends to it and to itself (segment ids), so a 4-choice question
costs one context plus four short continuations instead of four full prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from drllm_core.engine import HiddenState, PathEngine, SharedPrefix, pad_rows, token_batch
from drllm_core.tasks.prompts import Prompt


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
        input_ids, attention_mask = token_batch([p.input_ids for p in packs], pad_id)
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=pad_rows([p.position_ids for p in packs], 0),
            segment_ids=pad_rows([p.segment_ids for p in packs], 0),
            predict_at=pad_rows([p.predict_at for p in packs], 0),
            targets=pad_rows([p.targets for p in packs], 0),
            target_choice=pad_rows([p.target_choice for p in packs], -1),
            num_choices=max(p.num_choices for p in packs),
        )

    def repeat(self, rows: int) -> PackedBatch:
        """The same single question on `rows` rows (several paths for one question)."""
        assert self.input_ids.shape[0] == 1, "repeat expects a batch of one question"
        return PackedBatch(*(t.expand(rows, -1) for t in self._tensors()), num_choices=self.num_choices)

    def select(self, rows: Sequence[int]) -> PackedBatch:
        """The given rows, in that order."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return PackedBatch(*(t.index_select(0, index) for t in self._tensors()), num_choices=self.num_choices)

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

    def embed(self, engine: PathEngine, prefix: SharedPrefix | None = None) -> HiddenState:
        """The batch's state before layer 0; after `prefix` (when every row starts with it), its tokens only."""
        if prefix is not None and not prefix.starts(self.input_ids):
            prefix = None
        return engine.embed(
            self.input_ids, self.attention_mask, self.position_ids, self.segment_ids, prefix=prefix
        )


def choice_loglikelihoods(engine: PathEngine, state: HiddenState, batch: PackedBatch) -> Tensor:
    """(B, C) summed log-probabilities of each choice; -inf where a row has fewer choices.

    The lm_head runs once per distinct scored position (a question's choices share the position predicting
    their first tokens; padding has none), and each token's log-probability is its logit minus the
    position's logsumexp, without a (K, V) log_softmax: on Gemma's 262k vocabulary this head is most of a
    question's cost.
    """
    rows, slots = torch.nonzero(batch.target_choice >= 0, as_tuple=True)
    width = batch.input_ids.shape[1]
    at = batch.predict_at[rows, slots] - state.prefix_length  # the state holds no shared prefix's tokens
    keys, inverse = torch.unique(rows * width + at, return_inverse=True)
    logits = engine.logits_at(state, keys // width, keys % width).float()  # (K, V)
    device = logits.device
    inverse = inverse.to(device)
    targets = batch.targets[rows, slots].to(device)
    token_lp = (logits[inverse, targets] - torch.logsumexp(logits, dim=-1)[inverse]).cpu()
    index = (rows, batch.target_choice[rows, slots])
    shape = (batch.input_ids.shape[0], batch.num_choices)
    sums = torch.zeros(shape).index_put_(index, token_lp, accumulate=True)
    present = torch.zeros(shape, dtype=torch.bool).index_put_(index, torch.tensor(True))
    return sums.masked_fill(~present, -math.inf)
