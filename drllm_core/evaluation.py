"""Evaluation configurations and their honest baselines, and the summaries that compare them.

Configurations (each scores the same questions, so every comparison is paired):
  vanilla        the default path
  drllm          routers trained on MCTS labels, at the default knob (and `drllm_knob_<p>` over a sweep)
  routers_<x>    routers trained on other labels: `chain` / `random` search, `shuffled` (the control)
  shortgpt_bi    static pruning in the style of ShortGPT: drop the layers with the lowest Block Influence
                 (1 - cosine between a block's input and output, on search examples), as many as Dr.LLM saves
  best_static    the single static path, chosen greedily on search examples, with the blocks Dr.LLM uses
  random_skip    per question, the same number of blocks as Dr.LLM's path for it, skipped at random
  oracle_search  the MCTS paths on the search set: an upper bound (every kept path is right by construction)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from drllm_core import io
from drllm_core.errors import DrllmError
from drllm_core.paths import EXECUTE, SKIP, LayerPath, PathConstraints
from drllm_core.prepare import sample
from drllm_core.rewards import PathRewards
from drllm_core.routers import routers_hash
from drllm_core.stats import paired_comparison, wilson_interval
from drllm_core.tasks.evaluator import ExampleScorer
from drllm_core.tasks.schema import Example, letter

log = logging.getLogger(__name__)


@torch.no_grad()
def block_influence(scorer: ExampleScorer, examples: Sequence[Example], batch_size: int = 8) -> list[float]:
    """ShortGPT's Block Influence per layer: 1 - mean cosine similarity between the hidden state entering and
    leaving the block, over the prompt tokens of `examples`, on the default path."""
    engine = scorer.engine
    totals = torch.zeros(engine.num_layers, dtype=torch.float64)
    tokens = 0
    for start in range(0, len(examples), batch_size):
        rows = [scorer.prompt_ids(e) for e in examples[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [scorer.tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        state = engine.embed(ids, mask)
        real = mask.bool().to(state.hidden.device)
        for layer in range(engine.num_layers):
            before = state.hidden
            state = engine.run(state, engine.default_paths(len(rows)), stop=layer + 1)
            cosine = torch.nn.functional.cosine_similarity(before.float(), state.hidden.float(), dim=-1)
            totals[layer] += (1 - cosine)[real].sum().item()
        tokens += int(real.sum())
    return (totals / max(tokens, 1)).tolist()


def lowest_influence_path(influence: Sequence[float], skips: int) -> LayerPath:
    """Skip the `skips` layers with the lowest Block Influence (ShortGPT applies no further constraint)."""
    counts = [EXECUTE] * len(influence)
    for layer in np.argsort(influence, kind="stable")[:skips]:
        counts[int(layer)] = SKIP
    return LayerPath(tuple(counts))


def best_static_path(
    scorer: ExampleScorer, examples: Sequence[Example], skips: int, constraints: PathConstraints
) -> tuple[LayerPath, list[dict]]:
    """Greedy: `skips` times, skip the layer whose removal keeps the most search examples right (ties: the
    larger summed margin). Candidates share prefixes with the current path, so PathRewards reuses them within
    a round; one example's cached states are dropped before the next example's (bounded memory at any scale)."""
    current = LayerPath.default(scorer.engine.num_layers)
    trace = []
    for _ in range(skips):
        candidates = [
            current.with_count(layer, SKIP)
            for layer, count in enumerate(current.counts)
            if count == EXECUTE and current.with_count(layer, SKIP).is_valid(current.num_layers, constraints)
        ]
        if not candidates:
            break
        outcomes = [PathRewards(scorer, example)(candidates) for example in examples]
        scores = [
            (sum(o[i].correct for o in outcomes), sum(np.nan_to_num(o[i].margin) for o in outcomes))
            for i in range(len(candidates))
        ]
        best = max(range(len(candidates)), key=lambda i: scores[i])
        current = candidates[best]
        trace.append({"path": str(current), "search_correct": scores[best][0], "examples": len(examples)})
        log.info(
            "best static path, %d skipped: %s (%d/%d search questions right)",
            len(trace),
            current,
            scores[best][0],
            len(examples),
        )
    return current, trace


def random_paths(
    saved: Sequence[int], num_layers: int, constraints: PathConstraints, seed: int
) -> list[LayerPath]:
    """For each question, a random valid path that skips `saved[i]` layers (the default path when <= 0)."""
    rng = np.random.default_rng(seed)
    paths = []
    for count in saved:
        path = LayerPath.default(num_layers)
        for _ in range(1000):
            layers = rng.choice(num_layers, size=max(0, min(count, num_layers)), replace=False)
            candidate = LayerPath(
                tuple(SKIP if i in set(layers.tolist()) else EXECUTE for i in range(num_layers))
            )
            if candidate.is_valid(num_layers, constraints):
                path = candidate
                break
        paths.append(path)
    return paths


def result_rows(
    config: str, set_name: str, examples: Sequence[Example], decisions, extra: dict | None = None
) -> list[dict]:
    rows = []
    for example, decision in zip(examples, decisions, strict=True):
        gold = letter(example.answer_index) if example.choices else example.answer
        rows.append(
            {
                "config": config,
                "set": set_name,
                "example_id": example.example_id,
                "task": example.task,
                "prediction": decision.prediction,
                "gold": gold,
                "correct": bool(decision.correct),
                "margin": float(decision.margin),
                "path": list(decision.path),
                "blocks": int(sum(decision.path)),
                **(extra or {}),
            }
        )
    return rows


def summarize(results: pd.DataFrame, num_layers: int) -> pd.DataFrame:
    """Per configuration x set x task (and task 'all'): accuracy with its 95% Wilson interval, blocks per
    token, blocks saved and share of paths that differ between questions."""
    rows = []
    for (config, set_name), frame in results.groupby(["config", "set"], sort=False):
        groups = [("all", frame), *frame.groupby("task", sort=True)]
        for task, part in groups:
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
                }
            )
    return pd.DataFrame(rows)


def compare(results: pd.DataFrame, config: str, reference: str, set_name: str) -> dict | None:
    """Paired comparison of two configurations on the questions both answered."""
    a = results[(results["config"] == config) & (results["set"] == set_name)].set_index("example_id")[
        "correct"
    ]
    b = results[(results["config"] == reference) & (results["set"] == set_name)].set_index("example_id")[
        "correct"
    ]
    shared = a.index.intersection(b.index)
    if shared.empty:
        return None
    return {
        "config": config,
        "reference": reference,
        "set": set_name,
        **paired_comparison(a.loc[shared].tolist(), b.loc[shared].tolist()),
    }


def held_out_search_questions(search_set: Sequence[Example], search: dict, count: int) -> list[Example]:
    """`count` search-set questions the search did not use (its `max_examples` sample by `seed`): labels
    never saw them, so the knob is chosen on them (and label rules are compared on them)."""
    searched = {e.example_id for e in sample(search_set, search.get("max_examples"), search.get("seed", 0))}
    return sample([e for e in search_set if e.example_id not in searched], count, 1)


def calibrate_knob(
    scorer: ExampleScorer,
    routed,
    examples: Sequence[Example],
    grid: Sequence[float],
    min_blocks_saved: float,
    batch_size: int = 16,
) -> tuple[float, list[dict]]:
    """Choose the routing knob on held-out search questions (never the test sets): accuracy and blocks saved
    of every grid value, then `choose_knob_from`."""
    table = []
    for done, knob in enumerate(grid, 1):
        routed.knob = float(knob)
        decisions = routed.score(scorer, examples, batch_size)
        table.append({"knob": float(knob), **accuracy_and_blocks_saved(decisions, scorer.engine.num_layers)})
        log.info(
            "calibration %d/%d: knob %+g, accuracy %.3f, blocks saved %.2f",
            done,
            len(grid),
            knob,
            table[-1]["accuracy"],
            table[-1]["blocks_saved"],
        )
    return choose_knob_from(table, min_blocks_saved), table


@dataclass(frozen=True)
class OperatingPoint:
    """How a router set routes wherever it runs: the knob the calibrate stage chose and the skip-run limit
    (search.max_skip_run) it was calibrated under. `evaluate` measures the routers there and `register` serves
    them there, so the registered version behaves as evaluated."""

    knob: float
    max_skip_run: int | None
    calibration: list[dict]


def operating_point(path: str | Path, routers: str | Path) -> OperatingPoint:
    """The operating point the calibrate stage wrote to `path`, refusing a file written for other routers
    (their content hash differs) or by a version that did not record the skip-run limit."""
    if not Path(path).is_file():
        raise DrllmError(f"{path} not found: run `dvc repro calibrate` (it chooses the routers' knob)")
    chosen = io.read_json(path)
    if chosen.get("routers_hash") != routers_hash(routers):
        raise DrllmError(f"{path} was calibrated for other routers than {routers}: run `dvc repro calibrate`")
    if "max_skip_run" not in chosen:
        raise DrllmError(
            f"{path} does not record the skip-run limit: run `dvc repro calibrate` to rewrite it"
        )
    return OperatingPoint(float(chosen["knob"]), chosen["max_skip_run"], chosen.get("calibration", []))


def accuracy_and_blocks_saved(decisions, num_layers: int) -> dict:
    """Accuracy and mean blocks saved per token of scored decisions (each with `.correct` and `.path`)."""
    return {
        "accuracy": float(np.mean([d.correct for d in decisions])),
        "blocks_saved": float(num_layers - np.mean([sum(d.path) for d in decisions])),
    }


def choose_knob_from(table: Sequence[dict], min_blocks_saved: float) -> float:
    """Among the grid values saving at least `min_blocks_saved` blocks per token, the one that skips least
    (ties: the more accurate); when none saves that much, the one saving the most. Not the most accurate one:
    on a few hundred questions neighbouring grid values differ in accuracy by noise while blocks saved are
    measured precisely. Picking by accuracy chose knob 0 over +0.12 on the default model by one question in
    300 (0.3 points); knob 0 then saved 3.6 blocks at -8.5 points in-domain."""
    enough = [row for row in table if row["blocks_saved"] >= min_blocks_saved]
    if not enough:
        return max(table, key=lambda r: r["blocks_saved"])["knob"]
    return min(enough, key=lambda r: (r["blocks_saved"], -r["accuracy"]))["knob"]
