"""Score candidate layer paths for one example: memoised, batched, and reusing shared path prefixes.

The search asks "is the answer right under this path?" many times for one question. `PathRewards` answers
with as little compute as the engine allows:
* memo: a path is scored once;
* prefix reuse: the hidden state after every layer of every scored path is kept (up to a memory budget,
  least recently used first out), keyed by the counts up to that layer; a new path starts from the longest
  prefix still cached;
* batching: the paths scored together run as a trie (`PathEngine.run_trie`): one row per distinct prefix
  and layer, so paths that leave the default path at different layers share its states up to there;
* packed choices: the question context and all its choices are one row (drllm_core.tasks.packing).
Generation-scored tasks (math) have no choices to pack: their paths are scored by batched generation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError
from drllm_core.paths import LayerPath
from drllm_core.tasks.answers import Decision, choice_decision, decide_choice
from drllm_core.tasks.packing import PackedBatch, choice_loglikelihoods
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer

# correct: 1 for a right answer | margin: right, with gold ahead of the best wrong choice by `margin` |
# faithful: the default path's answer, ahead of the runner-up by `margin` (right or wrong)
REWARDS = ("correct", "margin", "faithful")


@dataclass(frozen=True)
class Outcome:
    correct: bool  # right answer under the task's scorer
    margin: float  # gold minus best wrong choice score (nan for generation)
    reward: float  # what the search maximises: 1.0 or 0.0
    prediction: str = ""  # the answer under this path
    lead: float = math.nan  # its score minus the runner-up's (nan for generation)
    scores: tuple[float, ...] = ()  # per choice (multiple choice)


class PathRewards:
    """Rewards of paths for one example. `reward: margin` counts a path as correct only when the gold choice
    beats the best wrong one by at least `margin` (in the task's score units); `faithful` rewards a path that
    keeps the default path's answer with a lead of at least `margin` over the runner-up, which labels every
    question, right or wrong, and rewards skips that do not change what the model thinks."""

    def __init__(
        self,
        scorer: ExampleScorer,
        example: Example,
        reward: str = "correct",
        margin: float = 0.0,
        cache_mb: float = 1024,
    ):
        if reward not in REWARDS:
            raise ConfigError(f"unknown reward {reward!r}; use one of {REWARDS}")
        self.scorer = scorer
        self.engine: PathEngine = scorer.engine
        self.example = example
        self.reward = reward
        self.margin = margin
        self.memo: dict[LayerPath, Outcome] = {}
        self.layer_evaluations = 0  # block executions spent on this example (one per row and block)
        self.settings = scorer.settings(example.task)
        self._packed = scorer.scorer_kind(example) == "loglikelihood"
        if self._packed:
            self._batch = PackedBatch.collate([scorer.pack(example)], scorer.tokenizer.pad_token_id)
            self._root = self._batch.embed(self.engine, scorer.shared_prefix)
            self._states: OrderedDict[tuple[int, ...], Tensor] = OrderedDict({(): self._root.hidden})
            state_bytes = self._root.hidden.numel() * self._root.hidden.element_size()
            self._max_states = max(2, int(cache_mb * 2**20) // state_bytes)  # prefix states, root included

    @property
    def prefix_cache_bytes(self) -> int:
        """Memory the prefix states hold now; its peak is its value after the search (the cache only grows
        until its cap). Zero for a generated answer, which caches no prefix."""
        if not self._packed:
            return 0
        return sum(state.numel() * state.element_size() for state in self._states.values())

    def __call__(self, paths: list[LayerPath]) -> list[Outcome]:
        """Outcomes in the order of `paths`; only paths never seen before cost compute. The default path is
        scored first when the reward is faithful: it compares with its answer."""
        default = LayerPath.default(self.engine.num_layers)
        if self.reward == "faithful" and default not in self.memo and any(p != default for p in paths):
            self([default])
        fresh = list(dict.fromkeys(p for p in paths if p not in self.memo))
        if fresh:
            before = self.engine.counter.rows
            outcomes = self._score_packed(fresh) if self._packed else self._score_generated(fresh)
            self.layer_evaluations += self.engine.counter.rows - before
            self.memo.update(zip(fresh, outcomes, strict=True))
        return [self.memo[p] for p in paths]

    def seed(self, scored: dict[LayerPath, Sequence[float]]) -> None:
        """Take paths another run scored, with their per-choice scores (Outcome.scores, as a search record
        keeps them), as scored here: relabelling a search, or choosing a static path on search questions,
        then costs no forward for them. Multiple choice only, and only with the default path among them (a
        faithful reward compares with its answer)."""
        default = LayerPath.default(self.engine.num_layers)
        if not self._packed or default not in scored:
            return
        for path in sorted(scored, key=lambda p: p != default):
            decision = choice_decision(torch.tensor(list(scored[path]), dtype=torch.float64), self.example)
            self.memo[path] = self._outcome(decision, path)

    def _outcome(self, decision: Decision, path: LayerPath) -> Outcome:
        if self.reward == "faithful":
            reference = decision if path.is_default else self.memo[LayerPath.default(path.num_layers)]
            passed = (
                decision.prediction == reference.prediction and not decision.lead < self.margin
            )  # nan: kept
        else:
            margin = decision.margin
            passed = decision.correct and (
                self.reward == "correct" or math.isnan(margin) or margin >= self.margin
            )
        return Outcome(
            decision.correct,
            decision.margin,
            1.0 if passed else 0.0,
            decision.prediction,
            decision.lead,
            decision.scores,
        )

    def _score_generated(self, paths: list[LayerPath]) -> list[Outcome]:
        counts = torch.tensor([p.counts for p in paths])
        decisions = self.scorer.score_generated([self.example] * len(paths), counts, self.settings.scorer)
        return [self._outcome(d, p) for d, p in zip(decisions, paths, strict=True)]

    def _score_packed(self, paths: list[LayerPath]) -> list[Outcome]:
        """Each path resumes from its longest cached prefix, and paths scored together share the layers
        of their common prefixes (static selection scores several paths of one question at once)."""
        resume = []
        for path in paths:
            start = self._longest_cached_prefix(path)
            resume.append((start, self._states[path.counts[:start]]))
        final = self.engine.run_trie(
            self._root,
            [(0, path.counts) for path in paths],
            resume,
            remember=lambda row, prefix, hidden: self._remember(prefix, hidden),
        )
        scores = choice_loglikelihoods(self.engine, final, self._batch.repeat(len(paths)))
        decisions = [decide_choice(scores[row], self.example, self.settings) for row in range(len(paths))]
        return [self._outcome(d, p) for d, p in zip(decisions, paths, strict=True)]

    def _longest_cached_prefix(self, path: LayerPath) -> int:
        for length in range(len(path.counts), -1, -1):
            if path.counts[:length] in self._states:
                self._states.move_to_end(path.counts[:length])
                return length
        raise AssertionError("the empty prefix is always cached")

    def _remember(self, prefix: tuple[int, ...], hidden: Tensor) -> None:
        self._states[prefix] = hidden.clone()  # a copy: a row's view would keep its whole batch alive
        while len(self._states) > self._max_states:
            oldest = next(iter(self._states))
            if oldest == ():
                self._states.move_to_end(())  # the root is never evicted
            else:
                del self._states[oldest]
