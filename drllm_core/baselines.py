"""Static baselines at a given number of skipped layers, chosen on search questions, never on test sets.

shortgpt_bi   ShortGPT-style pruning: drop the layers with the lowest Block Influence (1 - cosine between
              a block's input and output over the prompt tokens)
best_static   one fixed path, grown greedily: each step skips the layer whose removal keeps the most search
              questions right
random_skip   per question, a random valid path with a given number of skipped layers
random_deepest  a router's deepest path on random questions, vanilla on the others: its budget spent in its
              own shape without reading the prompt
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from drllm_core.engine import token_batch
from drllm_core.errors import DrllmError
from drllm_core.paths import EXECUTE, SKIP, LayerPath, PathConstraints
from drllm_core.rewards import PathRewards
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer

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
        ids, mask = token_batch(rows, scorer.tokenizer.pad_token_id)
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


CRITERIA = {  # static path: what it keeps most of on the search questions
    "best_static": "correct",  # right answers (ties: the larger summed margin of the gold answer)
    "faithful_static": "reward",  # the vanilla model's answers (the faithful reward; ties: the same margin)
}


def static_paths(
    scorer: ExampleScorer,
    examples: Sequence[Example],
    budgets: Sequence[int],
    constraints: PathConstraints,
    keep: int = 10,
    known: dict[str, dict[LayerPath, Sequence[float]]] | None = None,
) -> tuple[dict[str, dict[int, LayerPath]], list[dict]]:
    """Greedy static paths for each criterion of CRITERIA and each number of skipped layers in `budgets`:
    the first skip is the best single skip of every layer; each later one adds, to the path so far, the best
    skip among the `keep` layers that were best alone (a bounded search: the first round ranks all layers).
    One forward per example and round scores the candidates of every criterion together (prefixes shared);
    paths in `known` (per example id: path -> choice scores, e.g. the search's single skips) and paths
    scored in earlier rounds cost nothing. Returns the paths and a trace of each step, with its cost."""
    layers = scorer.engine.num_layers
    scored = {e.example_id: dict((known or {}).get(e.example_id, {})) for e in examples}
    current = {name: LayerPath.default(layers) for name in CRITERIA}
    chosen: dict[str, dict[int, LayerPath]] = {name: {} for name in CRITERIA}
    shortlist: dict[str, list[int]] = {}
    trace = []
    for step in range(1, max(budgets, default=0) + 1):
        candidates = {
            name: [
                path.with_count(layer, SKIP)
                for layer in (shortlist.get(name) or range(layers))
                if path.counts[layer] == EXECUTE
                and path.with_count(layer, SKIP).is_valid(layers, constraints)
            ]
            for name, path in current.items()
        }
        every = list(dict.fromkeys(p for paths in candidates.values() for p in paths))
        if not every:
            break
        start, rows = time.perf_counter(), scorer.engine.counter.rows
        outcomes = []
        for example in examples:
            rewards = PathRewards(scorer, example, reward="faithful")
            rewards.seed(scored[example.example_id])
            outcomes.append(rewards(every))
            scored[example.example_id] |= {p: o.scores for p, o in rewards.memo.items() if o.scores}
        cost = {"seconds": time.perf_counter() - start, "block_rows": scorer.engine.counter.rows - rows}
        tally = {  # per criterion and path: (questions kept, summed margin) over the examples
            field: {
                path: (
                    sum(float(getattr(o[i], field)) for o in outcomes),
                    sum(np.nan_to_num(o[i].margin if field == "correct" else o[i].lead) for o in outcomes),
                )
                for i, path in enumerate(every)
            }
            for field in set(CRITERIA.values())
        }
        for name, field in CRITERIA.items():
            if not candidates[name]:
                continue
            ranked = sorted(candidates[name], key=tally[field].__getitem__, reverse=True)
            if step == 1:  # later rounds try the layers that were best alone
                shortlist[name] = [p.counts.index(SKIP) for p in ranked[:keep]]
            current[name] = chosen[name][step] = ranked[0]
            kept = tally[field][ranked[0]][0]
            trace.append(
                {
                    "baseline": name,
                    "skips": step,
                    "path": str(ranked[0]),
                    "kept": kept,
                    "examples": len(examples),
                    **cost,  # the round's, shared by the criteria
                }
            )
            log.info(
                "%s, %d skipped: %s (%d of %d search questions kept)",
                name,
                step,
                ranked[0],
                kept,
                len(examples),
            )
    return {name: {b: paths[b] for b in budgets if b in paths} for name, paths in chosen.items()}, trace


def random_path(
    example_id: str, skips: int, num_layers: int, constraints: PathConstraints, seed: int
) -> LayerPath:
    """A random valid path that skips exactly `skips` layers (none when <= 0), drawn uniformly among the
    placements the constraints allow. The draw depends only on (seed, question): a question gets the same
    path whichever batch or order it is scored in."""
    rng = question_rng(example_id, seed)
    count = max(0, int(skips))
    for _ in range(10_000):
        layers = set(rng.choice(num_layers, size=min(count, num_layers), replace=False).tolist())
        path = LayerPath(tuple(SKIP if i in layers else EXECUTE for i in range(num_layers)))
        if path.is_valid(num_layers, constraints):
            return path
    raise DrllmError(
        f"no valid path skips {count} of {num_layers} layers under {constraints} in 10,000 random draws"
    )


def question_rng(example_id: str, seed: int) -> np.random.Generator:
    """A generator that depends only on (seed, question): the same draw whichever batch or order."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def random_questions(example_ids: Sequence[str], count: int, seed: int) -> set[str]:
    """`count` of the questions, drawn by a seeded uniform number per question (the smallest win)."""
    draws = sorted((question_rng(i, seed).random(), i) for i in dict.fromkeys(example_ids))
    return {i for _, i in draws[: max(0, count)]}


def deepest_path(paths: Sequence[LayerPath]) -> LayerPath:
    """The path executing the fewest blocks; among equals the most frequent, then the first."""
    counts = Counter(paths)  # keeps first-seen order: min() returns the first of equals
    return min(counts, key=lambda p: (sum(p.counts), -counts[p]))
