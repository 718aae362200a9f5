"""Run the path search over a set of examples: one record per example, checkpointed as it finishes, on this
process (`runtime.search_backend: local`) or sharded over Ray workers (`ray`, drllm_core.distributed).

A record holds every distinct path the search scored with its reward and margin, whether the default path
answers correctly, and what the search spent (simulations, distinct paths scored, block evaluations). The
label rule (drllm_core.labels) then picks the kept path from the scored ones, so a new rule relabels the
checkpoint without searching again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd
import torch
from tqdm import tqdm

from drllm_core.checkpoint import Checkpoint
from drllm_core.distributed import ray_map
from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError, config_from, typed
from drllm_core.labels import LabelRule, labelled
from drllm_core.models import LoadedModel, ModelSpec, load_model
from drllm_core.rewards import REWARDS, PathRewards
from drllm_core.runtime import Runtime
from drllm_core.search import SearchConfig, example_rng, search
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer

log = logging.getLogger(__name__)
# What a search cost, in the checkpoint but never in the labelled records downstream stages read: wall time,
# and block executions, which depend on runtime.prefix_cache_mb (an evicted prefix is recomputed).
COST_FIELDS = ("seconds", "layer_evaluations")


@dataclass(frozen=True)
class RewardConfig:
    reward: str = "correct"  # correct | margin | faithful
    margin: float = (
        0.0  # margin: gold ahead of the best wrong choice; faithful: the answer over the runner-up
    )

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ConfigError(f"unknown search.reward {self.reward!r}; use one of {REWARDS}")
        if self.margin < 0:  # a negative lead would reward a path whose answer loses
            raise ConfigError(f"search.margin must be at least 0 (nats), got {self.margin}")


@dataclass(frozen=True)
class SearchSettings:
    """params.yaml's `search` section for one strategy, split by what reads each part."""

    search: SearchConfig
    reward: RewardConfig
    rule: LabelRule
    max_examples: int | None  # search examples sampled by seed from the search set (None: all)

    @classmethod
    def from_params(cls, params: dict, strategy: str) -> SearchSettings:
        def part(kind):
            return config_from(kind, "search", {k: v for k, v in params.items() if k in _names(kind)})

        others = (*_names(RewardConfig), *_names(LabelRule), "max_examples", "strategies")
        config = config_from(SearchConfig, "search", {**params, "strategy": strategy}, ignore=others)
        max_examples = typed(params.get("max_examples"), int | None, "search.max_examples")
        if max_examples is not None and max_examples < 1:
            raise ConfigError(f"search.max_examples must be at least 1, or null for all, got {max_examples}")
        rule = part(LabelRule)
        if strategy == "singles":  # its records hold single skips only: their labels are skip costs
            rule = replace(rule, label_rule="skip_cost")
        elif rule.label_rule == "skip_cost":
            raise ConfigError(
                "search.label_rule skip_cost labels the singles strategy only; use shortest, consensus or soft"
            )
        return cls(config, part(RewardConfig), rule, max_examples)


def _names(kind) -> set[str]:
    return set(kind.__dataclass_fields__)


class ExampleSearcher:
    """Everything one process needs to search examples: model, engine, scorer and the configs."""

    def __init__(
        self,
        loaded: LoadedModel,
        task_params: dict,
        search: SearchConfig,
        reward: RewardConfig,
        cache_mb: float = Runtime.prefix_cache_mb,
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
            "scored_scores": [list(outcome.scores) for outcome in rewards.memo.values()],  # per choice
            "scored_prediction": [outcome.prediction for outcome in rewards.memo.values()],
            "scored_correct": [outcome.correct for outcome in rewards.memo.values()],
        }


def _remote_searcher(model_params, task_params, search, reward, cache_mb) -> ExampleSearcher:
    """Built inside each Ray worker: loads the model there."""
    return ExampleSearcher(
        load_model(ModelSpec.from_params(model_params)), task_params, search, reward, cache_mb
    )


def searcher_factory(
    loaded: LoadedModel, model_params: dict, task_params: dict, settings: SearchSettings, runtime: Runtime
) -> Callable[[], ExampleSearcher]:
    """How to build a searcher: on this process with the model already loaded, or in every Ray worker."""
    arguments = (task_params, settings.search, settings.reward, runtime.prefix_cache_mb)
    if runtime.search_backend == "local":
        return functools.partial(ExampleSearcher, loaded, *arguments)
    return functools.partial(_remote_searcher, model_params, *arguments)


def search_examples(
    examples: list[Example],
    make_searcher: Callable[[], ExampleSearcher],
    runtime: Runtime,
    checkpoint: Checkpoint,
    rule: LabelRule,
) -> pd.DataFrame:
    """Labelled records of every example, in order, searching the ones `checkpoint` lacks (each record is
    checkpointed as soon as it exists), with a progress bar."""
    todo = [e for e in examples if e.example_id not in checkpoint]
    log.info(
        "%d of %d examples already done (checkpoint %s)",
        len(examples) - len(todo),
        len(examples),
        checkpoint.path.name,
    )
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="search", unit="ex")
    rows = {
        e.example_id: labelled(checkpoint.records[e.example_id], rule)
        for e in examples
        if e.example_id in checkpoint
    }
    found = sum(r["wrong_to_correct"] for r in rows.values())
    kept = sum(r["kept"] for r in rows.values())

    def on_record(record: dict) -> None:
        nonlocal found, kept
        checkpoint.add(record)
        row = rows[record["example_id"]] = labelled(record, rule)
        found, kept = found + row["wrong_to_correct"], kept + row["kept"]
        bar.set_postfix(w2c=found, kept=kept)
        bar.update()

    threads = torch.get_num_threads()
    try:
        if todo and runtime.search_backend == "local":
            torch.set_num_threads(runtime.threads or threads)
            records = map(make_searcher(), todo)
        else:
            records = (
                ray_map(make_searcher, todo, runtime.ray_address, runtime.workers, runtime.threads)
                if todo
                else []
            )
        for record in records:
            on_record(record)
    finally:
        torch.set_num_threads(threads)
    bar.close()
    return pd.DataFrame([rows[e.example_id] for e in examples])


def split_cost(records: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The labelled records without their cost fields (what downstream stages read), and the search's cost:
    seconds and block executions (per example and per simulation), for metrics/timings/."""
    simulations = records["simulations"].sum()
    layer_evaluations = records["layer_evaluations"].sum()
    cost = {
        "search_seconds": float(records["seconds"].sum()),
        "layer_evaluations_per_example": float(layer_evaluations / len(records)) if len(records) else 0.0,
        "layer_evaluations_per_simulation": float(layer_evaluations / simulations) if simulations else 0.0,
    }
    return records.drop(columns=list(COST_FIELDS)), cost
