"""Routed inference: a base model with a router set, deciding once per input on the prompt.

Layer by layer during the prompt's forward pass, the router of layer l reads the hidden state that the
earlier decisions produced and picks skip / execute / repeat; the resulting path is then fixed for scoring
and for every generated token (the KV cache keeps one slot per layer pass). Rows of a batch take their own
paths. `knob` trades accuracy for compute (drllm_core.routers.knob_decisions); with `enforce_constraints`
a skip that would make a run of more than `max_skip_run` skipped layers becomes an execute, so routed
paths stay inside the space the labels came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from drllm_core.engine import Decide, PathEngine
from drllm_core.models import LoadedModel
from drllm_core.paths import EXECUTE, PAPER_CONSTRAINTS, SKIP
from drllm_core.routers import RouterSet, knob_decisions, window_average, window_weights
from drllm_core.tasks.evaluator import ExampleScorer, eos_token_ids
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scoring import Decision


@dataclass
class RoutedAnswer:
    text: str
    path: tuple[int, ...]  # per-layer counts the prompt chose
    blocks: int  # blocks executed per token
    new_tokens: int


class RoutedModel:
    def __init__(
        self,
        loaded: LoadedModel,
        routers: RouterSet,
        knob: float = 0.0,
        max_skip_run: int | None = PAPER_CONSTRAINTS.max_skip_run,
        enforce_constraints: bool = True,
    ):
        routers.check_model(loaded.num_layers, loaded.model.config.hidden_size)
        self.loaded = loaded
        self.routers = routers.to(loaded.device).float().eval()
        self.layer_routers = self.routers.folded()
        self.engine = PathEngine(loaded.model)
        self.knob = knob
        self.max_skip_run = max_skip_run if enforce_constraints else None

    @classmethod
    def from_folder(cls, loaded: LoadedModel, folder: str, force: bool = False, **options) -> RoutedModel:
        """Routers saved by the train stage, checked against the model's weight fingerprint."""
        return cls(loaded, RouterSet.load(folder, loaded.model, force), **options)

    def decider(self, prompt_mask: Tensor) -> Decide:
        """The engine hook that routes one batch; prompt_mask (B, T) marks the tokens routers read."""
        weights, window_mask = window_weights(prompt_mask.to(self.loaded.device), self.routers.config.windows)
        average = window_average(window_mask)
        skip_run = [0] * prompt_mask.shape[0]  # per row: layers skipped in a row so far

        @torch.no_grad()
        def decide(layer: int, hidden: Tensor) -> Tensor:
            pooled = torch.bmm(weights, hidden.float())  # pool_windows, with the weights computed once
            counts = knob_decisions(self.layer_routers[layer].logits(pooled, average).tolist(), self.knob)
            for row, count in enumerate(counts):  # plain Python: a few rows cost less than tensor operations
                if count == SKIP and self.max_skip_run is not None and skip_run[row] >= self.max_skip_run:
                    count = counts[row] = EXECUTE  # the row's skip run is full: execute instead
                skip_run[row] = skip_run[row] + 1 if count == SKIP else 0
            return torch.tensor(counts)

        return decide

    def scorer(self, task_params: dict | None = None, shots=None) -> ExampleScorer:
        return ExampleScorer(self.engine, self.loaded.tokenizer, task_params, shots)

    def score(
        self, scorer: ExampleScorer, examples: Sequence[Example], batch_size: int = 8, **kwargs
    ) -> list[Decision]:
        """Task decisions with routed paths (each Decision records its path)."""
        return scorer.score(examples, batch_size=batch_size, router=self.decider, **kwargs)

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 64, chat_template: bool = False
    ) -> list[RoutedAnswer]:
        """Greedy routed generation for raw prompts, wrapped in the chat template when asked and available (off
        by default, as the default routers were trained: `tasks.defaults.chat_template`)."""
        tokenizer = self.loaded.tokenizer
        if chat_template and getattr(tokenizer, "chat_template", None):
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            rows = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        else:
            rows = [tokenizer(p).input_ids for p in prompts]
        pad = tokenizer.pad_token_id
        ids, mask = left_padded(rows, pad)
        out = self.engine.generate(
            ids,
            None,
            mask,
            max_new_tokens,
            eos_token_ids(self.loaded.model, tokenizer),
            pad,
            decide=self.decider(mask.bool()),
        )
        answers = []
        for row in range(len(prompts)):
            length = int(out.lengths[row])
            path = tuple(int(c) for c in out.counts[row])
            text = tokenizer.decode(out.tokens[row, :length], skip_special_tokens=True)
            answers.append(RoutedAnswer(text, path, sum(path), length))
        return answers


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token id rows -> ids (B, T) padded on the left (generation appends on the right) and the mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask
