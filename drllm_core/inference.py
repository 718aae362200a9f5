"""Routed inference: a base model with a router set, deciding once per input on the prompt.

Layer by layer during the prompt's forward pass, the router of layer l reads the hidden state that the
earlier decisions produced and picks skip / execute / repeat; the path is then fixed for scoring and for
every generated token (the KV cache keeps one slot per layer pass). Rows of a batch take their own paths.
The router folder says how to route (drllm_core.routing.Routing): the knob, and the path limits the labels
were searched under, which every routed path keeps (a decision that would break one becomes an execute, or
a skip where only a skip keeps the block budget).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from drllm_core.engine import Decide, Generation, PathEngine, token_batch
from drllm_core.errors import ConfigError
from drllm_core.models import LoadedModel
from drllm_core.paths import EXECUTE, SKIP
from drllm_core.routers import RouterSet, window_average, window_weights
from drllm_core.routing import check_knob, cost_decisions, knob_decisions
from drllm_core.tasks.answers import Decision
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer, eos_token_ids

log = logging.getLogger(__name__)


@dataclass
class RoutedAnswer:
    text: str
    path: tuple[int, ...]  # per-layer counts the prompt chose
    blocks: int  # blocks executed per token
    new_tokens: int
    tokens: tuple[int, ...] = ()  # the generated token ids (what generation agreement compares)


@dataclass
class RoutedChoice:
    choice: int  # index of the chosen answer
    scores: tuple[float, ...]  # per choice, the score the choice was picked by (log-likelihood)
    path: tuple[int, ...]
    blocks: int


class RoutedModel:
    def __init__(
        self,
        loaded: LoadedModel,
        routers: RouterSet,
        knob: float | None = None,
        enforce_constraints: bool = True,
        engine: PathEngine | None = None,
    ):
        """`knob` None: the routers' calibrated knob (0, the routers' own choice, when uncalibrated)."""
        routers.check_model(loaded.num_layers, loaded.model.config.hidden_size)
        self.loaded = loaded
        self.routers = routers.to(loaded.device).float().eval()
        self.routing = routers.config.routing
        self.layer_routers = self.routers.folded() if routers.config.kind == "classes" else []
        self.engine = engine or PathEngine(loaded.model)
        default = self.routing.knob if self.routing.knob is not None else 0.0
        self.knob = default if knob is None else knob
        self.constraints = self.routing.constraints if enforce_constraints else None

    @property
    def knob(self) -> float:
        return self._knob

    @knob.setter
    def knob(self, value) -> None:
        """Any knob set (a served model's request param included) is checked: one outside [-1, 1] would route
        as nobody measured, or fail in the middle of a batch."""
        self._knob = check_knob(value, "the routing knob")

    @classmethod
    def from_folder(cls, loaded: LoadedModel, folder: str, force: bool = False, **options) -> RoutedModel:
        """Routers saved by the train (or calibrate) stage, checked against the model they will run on."""
        return cls(loaded, RouterSet.load(folder, loaded.model, force), **options)

    def decider(self, prompt_mask: Tensor) -> Decide:
        """The engine hook that routes one batch; prompt_mask (B, T) marks the tokens routers read. Class
        routers decide each layer from the state entering it; a cost router decides every skip at its
        decision layer, from the state entering that layer."""
        config = self.routers.config
        weights, window_mask = window_weights(prompt_mask.to(self.loaded.device), config.windows)
        average = window_average(window_mask)
        rows = prompt_mask.shape[0]
        skip_run, blocks = [0] * rows, [0] * rows  # per row: skipped layers in a row so far, blocks so far
        layers = self.loaded.num_layers
        plans: list[list[int]] = [[] for _ in range(rows)]  # cost routers: each row's layers to skip

        def wanted(layer: int, hidden: Tensor) -> list[int]:
            if config.kind == "classes":
                pooled = torch.bmm(weights, hidden.float())  # pool_windows, with the weights computed once
                return knob_decisions(self.layer_routers[layer].logits(pooled, average).tolist(), self.knob)
            if layer == config.decision_layer:
                pooled = torch.bmm(average, torch.bmm(weights, hidden.float())).squeeze(
                    1
                )  # the windows' mean
                threshold = self.routers.cost.threshold(self.knob)
                plans[:] = cost_decisions(
                    self.routers.cost(pooled).tolist(), config.candidates, threshold, self.routing.max_skips
                )
            return [SKIP if layer in plan else EXECUTE for plan in plans]

        @torch.no_grad()
        def decide(layer: int, hidden: Tensor) -> Tensor:
            counts = wanted(layer, hidden)
            for row, count in enumerate(counts):  # plain Python: a few rows cost less than tensor operations
                if self.constraints is not None:
                    count = counts[row] = self.constraints.allowed_count(
                        count, layer, layers, blocks[row], skip_run[row]
                    )
                skip_run[row] = skip_run[row] + 1 if count == 0 else 0
                blocks[row] += count
            return torch.tensor(counts)

        return decide

    def scorer(self, shots=None) -> ExampleScorer:
        """A scorer that prompts every task as the routers' features were prompted."""
        return ExampleScorer(self.engine, self.loaded.tokenizer, self.routing.tasks, shots)

    def score(
        self, scorer: ExampleScorer, examples: Sequence[Example], batch_size: int = 8, **kwargs
    ) -> list[Decision]:
        """Task decisions with routed paths (each Decision records its path)."""
        return scorer.score(examples, batch_size=batch_size, router=self.decider, **kwargs)

    def prompt_ids(self, prompt: str, chat_template: bool | None = None) -> list[int]:
        """Token ids of a raw prompt in the routers' prompt format (`chat_template` None), or as asked; a
        format the routers were not trained on routes as nobody measured, and says so."""
        trained = self.routing.prompt_settings().chat_template
        chat = trained if chat_template is None else chat_template
        if chat != trained:
            log.warning(
                "prompting %s the chat template, but the routers were trained %s it: routing is unmeasured there",
                "with" if chat else "without",
                "with" if trained else "without",
            )
        tokenizer = self.loaded.tokenizer
        if chat and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return tokenizer(text, add_special_tokens=False).input_ids
        return tokenizer(prompt).input_ids

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        chat_template: bool | None = None,
        batch_size: int | None = None,
        group_by_path: bool = False,
    ) -> list[RoutedAnswer]:
        """Greedy routed generation for raw prompts, formatted as the routers were trained (see prompt_ids),
        `batch_size` prompts per batch (None: all in one).

        `group_by_path`: route every prompt first (a routed prefill per batch), then batch the prompts in the
        order of their paths, so that a batch holds one path wherever enough prompts share it. Where a batched
        decode step is bound by reading weights (each executed layer's once, whatever rows run it), a batch of
        mixed paths saves little and a batch of one path saves its skipped layers in full. The same tokens
        either way, for one more prefill; on this project's CPU it did not pay (docs/benchmarks.md#scale)."""
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        tokenizer = self.loaded.tokenizer
        rows = [self.prompt_ids(p, chat_template) for p in prompts]
        limit = getattr(self.loaded.model.config, "max_position_embeddings", None)
        too_long = [i for i, row in enumerate(rows) if limit and len(row) + max_new_tokens > limit]
        if too_long:
            raise ConfigError(
                f"prompts {too_long[:5]} with {max_new_tokens} new tokens exceed the model's context of {limit} "
                "tokens: shorten them or ask for fewer tokens"
            )
        size = batch_size or max(len(rows), 1)
        order, paths = list(range(len(rows))), None
        if group_by_path and size < len(rows):  # one batch holds every prompt whatever their order
            paths = torch.cat([self._generate(rows, chunk, None, 1).counts for chunk in _chunks(order, size)])
            order = [row for members in rows_by_path(paths).values() for row in members]
        answers: list[RoutedAnswer | None] = [None] * len(rows)
        for chunk in _chunks(order, size):
            out = self._generate(rows, chunk, None if paths is None else paths[chunk], max_new_tokens)
            for position, row in enumerate(chunk):
                answers[row] = _answer(out, position, tokenizer)
        return answers

    def _generate(self, rows: list[list[int]], chunk: list[int], paths: Tensor | None, max_new_tokens: int):
        """The engine's greedy generation for the prompts `chunk` of `rows` (token ids), left-padded into one
        batch: routed (`paths` None) or along fixed paths."""
        tokenizer = self.loaded.tokenizer
        ids, mask = token_batch([rows[row] for row in chunk], tokenizer.pad_token_id, left=True)
        decide = self.decider(mask.bool()) if paths is None else None
        eos = eos_token_ids(self.loaded.model, tokenizer)
        return self.engine.generate(
            ids, paths, mask, max_new_tokens, eos, tokenizer.pad_token_id, decide=decide
        )

    def choose(
        self, prompts: Sequence[str], choices: Sequence[Sequence[str]], batch_size: int = 8
    ) -> list[RoutedChoice]:
        """Multiple choice for raw questions, prompted and scored as the routers' tasks were (the default
        task format: `tasks.defaults`), so a question scores here as `evaluate` scores it."""
        examples = [
            Example(f"served/{i}", "served", str(prompt), [str(c) for c in options], 0)
            for i, (prompt, options) in enumerate(zip(prompts, choices, strict=True))
        ]
        for example in examples:
            example.check()  # at least two non-empty choices
        scorer = self.scorer()
        scorer.check_lengths(examples)
        decisions = self.score(scorer, examples, batch_size)
        return [
            RoutedChoice(ord(d.prediction) - ord("A"), d.scores, tuple(d.path), sum(d.path))
            for d in decisions
        ]


def rows_by_path(counts: Tensor) -> dict[tuple[int, ...], list[int]]:
    """(B, L) per-row paths -> each distinct path and the rows that take it, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, path in enumerate(counts.tolist()):
        groups.setdefault(tuple(path), []).append(row)
    return groups


def _answer(out: Generation, row: int, tokenizer) -> RoutedAnswer:
    length = int(out.lengths[row])
    path = tuple(int(c) for c in out.counts[row])
    generated = out.tokens[row, :length]
    text = tokenizer.decode(generated, skip_special_tokens=True)
    return RoutedAnswer(text, path, sum(path), length, tuple(generated.tolist()))


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
