"""Run the path search over a set of examples: one record per example, checkpointed as it finishes, on
this process (`backend: local`) or sharded over Ray workers (`backend: ray`, drllm_core.distributed).

A record holds every distinct path the search scored with its reward and margin, whether the default path
answers correctly, and what the search spent (simulations, distinct paths scored, block evaluations). The
label rule (drllm_core.labels) then picks the kept path from the scored ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError
from drllm_core.models import LoadedModel
from drllm_core.rewards import REWARDS, PathRewards
from drllm_core.search import SearchConfig, example_rng, search
from drllm_core.tasks.evaluator import ExampleScorer
from drllm_core.tasks.schema import Example


@dataclass(frozen=True)
class RunnerConfig:
    """How the search runs (not what it finds): the `search` keys that do not change results."""

    backend: str = "local"  # local | ray
    ray_address: str | None = None  # join this Ray cluster; empty starts a local instance
    workers: int | None = None  # Ray workers (None: one per GPU, else one per 2 CPUs)
    threads: int | None = None  # torch threads per process (None: torch's default locally, 1 per Ray worker)
    prefix_cache_mb: float = 1024  # memory for the prefix states one example's search reuses (per process)

    def __post_init__(self):
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"unknown search.backend {self.backend!r}; use local or ray")
        if not isinstance(self.prefix_cache_mb, int | float) or self.prefix_cache_mb <= 0:
            raise ConfigError(
                f"search.prefix_cache_mb must be a positive number, got {self.prefix_cache_mb!r}"
            )


@dataclass(frozen=True)
class RewardConfig:
    reward: str = "correct"  # correct | margin
    margin: float = 0.0  # margin reward: gold must beat the best wrong choice by this much

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ConfigError(f"unknown search.reward {self.reward!r}; use one of {REWARDS}")


class ExampleSearcher:
    """Everything one process needs to search examples: model, engine, scorer and the configs."""

    def __init__(
        self,
        loaded: LoadedModel,
        task_params: dict,
        search: SearchConfig,
        reward: RewardConfig,
        cache_mb: float = RunnerConfig.prefix_cache_mb,
    ):
        self.loaded = loaded
        self.engine = PathEngine(loaded.model)
        self.scorer = ExampleScorer(self.engine, loaded.tokenizer, task_params)
        self.search = search
        self.reward = reward
        self.cache_mb = cache_mb

    def __call__(self, example: Example) -> dict:
        start = time.perf_counter()
        rewards = PathRewards(self.scorer, example, self.reward.reward, self.reward.margin, self.cache_mb)
        rng = example_rng(self.search.seed, example.example_id)
        result = search(rewards, self.loaded.num_layers, self.search, rng)
        return {
            "example_id": example.example_id,
            "task": example.task,
            "model": self.loaded.name,
            "strategy": self.search.strategy,
            "num_layers": self.loaded.num_layers,
            "default_correct": result.default_outcome.correct,
            "default_margin": result.default_outcome.margin,
            "simulations": result.simulations,
            "evaluations": result.evaluations,
            "layer_evaluations": rewards.layer_evaluations,
            "stopped_early": result.stopped_early,
            "seconds": time.perf_counter() - start,
            # every distinct path the search scored, the default first: drllm_core.labels picks the label
            "scored_labels": [list(path.counts) for path in rewards.memo],
            "scored_reward": [outcome.reward for outcome in rewards.memo.values()],
            "scored_margin": [outcome.margin for outcome in rewards.memo.values()],
        }


def run_local(searcher: ExampleSearcher, examples: Iterable[Example], threads: int | None) -> Iterator[dict]:
    if threads:
        torch.set_num_threads(threads)
    for example in examples:
        yield searcher(example)


def run_search(
    examples: list[Example],
    make_searcher: Callable[[], ExampleSearcher],
    runner: RunnerConfig,
    on_record: Callable[[dict], None],
) -> None:
    """Search every example and hand each record to `on_record` as soon as it exists."""
    if not examples:
        return
    if runner.backend == "local":
        records = run_local(make_searcher(), examples, runner.threads)
    else:
        from drllm_core.distributed import run_ray

        records = run_ray(examples, make_searcher, runner)
    for record in records:
        on_record(record)
