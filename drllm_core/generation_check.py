"""Routing measured on what the registry serves, greedy generation: routed answers against vanilla's on the
same prompts (identical continuations, tokens before the first divergence, the task score where a reference
exists, blocks saved), and a small routed-vs-vanilla wall-clock smoke check (benchmarks.inference measures).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import torch

from drllm_core.engine import token_batch
from drllm_core.inference import RoutedModel
from drllm_core.tasks.answers import cut_at_stops, decide_math
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer, eos_token_ids


def speed_check(routed: RoutedModel, scorer: ExampleScorer, examples: Sequence[Example], tokens: int) -> dict:
    """A small wall-clock check: routed vs vanilla greedy generation at batch 1 on the task prompts the
    routers were evaluated on, the same number of new tokens for both (no stop at EOS), after a warm-up,
    the two variants alternating. benchmarks/inference.py is the measurement; this is a smoke check."""
    engine = routed.engine
    timings = {"vanilla": 0.0, "drllm": 0.0}
    blocks = []
    for index, example in enumerate(examples):
        ids = torch.tensor([scorer.prompt_ids(example)])
        mask = torch.ones_like(ids)
        for variant in timings:
            decide = routed.decider(mask.bool()) if variant == "drllm" else None
            if index == 0:
                engine.generate(ids, None, mask, tokens, decide=decide)  # warm-up
                decide = routed.decider(mask.bool()) if variant == "drllm" else None
            start = time.perf_counter()
            generation = engine.generate(ids, None, mask, tokens, decide=decide)
            timings[variant] += time.perf_counter() - start
            if variant == "drllm":
                blocks.append(int(generation.counts.sum()))
    layers = engine.num_layers
    return {
        "prompts": len(examples),
        "new_tokens": tokens,
        "vanilla_seconds": timings["vanilla"],
        "drllm_seconds": timings["drllm"],
        "time_saved_pct": 100 * (1 - timings["drllm"] / timings["vanilla"]),
        "blocks_saved_pct": 100 * (1 - sum(blocks) / (len(blocks) * layers)),
    }


def generation_check(
    routed: RoutedModel,
    scorer: ExampleScorer,
    questions: Sequence[Example],
    problems: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 8,
) -> tuple[dict, list[dict]]:
    """Routing measured on what the registry serves, greedy generation in the served format: `questions`
    (in-domain, asked open: the question alone as the user's turn) and `problems` (prompted and scored as
    their task is, GSM8K style with math-verify), routed and vanilla. Per set: the share of continuations
    identical to vanilla's, the mean number of tokens before the first divergence, the task score where a
    reference exists, and blocks saved per token. Returns the figures and one row per prompt."""
    layers = routed.loaded.num_layers
    rows = []
    for set_name, examples in (("open", list(questions)), ("math", list(problems))):
        if set_name == "open":
            prompts = [routed.prompt_ids(e.question) for e in examples]
            tokens = [max_new_tokens] * len(examples)
        else:
            prompts = [scorer.prompt_ids(e) for e in examples]
            tokens = [scorer.settings(e.task).max_new_tokens for e in examples]
        for start in range(0, len(examples), batch_size):
            chunk = slice(start, start + batch_size)
            vanilla = _greedy(routed, prompts[chunk], max(tokens[chunk]), routed_paths=False)
            drllm = _greedy(routed, prompts[chunk], max(tokens[chunk]), routed_paths=True)
            for example, (v_tokens, _), (d_tokens, path) in zip(examples[chunk], vanilla, drllm, strict=True):
                row = {
                    "set": set_name,
                    "example_id": example.example_id,
                    "identical": v_tokens == d_tokens,
                    "tokens_to_divergence": _common_prefix(v_tokens, d_tokens),
                    "blocks_saved": layers - sum(path),
                }
                if set_name == "math":
                    for name, generated in (("vanilla", v_tokens), ("drllm", d_tokens)):
                        text = cut_at_stops(
                            scorer.tokenizer.decode(generated, skip_special_tokens=True),
                            scorer.prompt(example).stops,
                        )
                        row[f"{name}_correct"] = decide_math(text, example).correct
                rows.append(row)
    frame = pd.DataFrame(rows)
    figures = {}
    for set_name, part in frame.groupby("set", sort=False) if len(frame) else ():
        figures[set_name] = {
            "n": len(part),
            "identical_share": float(part["identical"].mean()),
            "mean_tokens_to_divergence": float(part["tokens_to_divergence"].mean()),
            "blocks_saved": float(part["blocks_saved"].mean()),
        }
        if "vanilla_correct" in part and part["vanilla_correct"].notna().all():
            figures[set_name] |= {
                "vanilla_score": float(part["vanilla_correct"].mean()),
                "drllm_score": float(part["drllm_correct"].mean()),
            }
    return figures, rows


def _greedy(routed: RoutedModel, prompts: list[list[int]], max_new_tokens: int, routed_paths: bool):
    """(generated token ids up to and with EOS, path) per prompt, vanilla or routed."""
    tokenizer = routed.loaded.tokenizer
    ids, mask = token_batch(prompts, tokenizer.pad_token_id, left=True)
    decide = routed.decider(mask.bool()) if routed_paths else None
    eos = eos_token_ids(routed.loaded.model, tokenizer)
    out = routed.engine.generate(ids, None, mask, max_new_tokens, eos, tokenizer.pad_token_id, decide=decide)
    return [
        (out.tokens[row, : int(out.lengths[row])].tolist(), [int(c) for c in out.counts[row]])
        for row in range(len(prompts))
    ]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens two generations share before they first differ (all of them when one is a prefix)."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))
