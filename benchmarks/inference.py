"""Routed vs vanilla wall clock: `python -m benchmarks.inference` (needs models/drllm from `dvc repro`).

Batch 1 and 8, prefill plus 64 greedy tokens on in-domain test prompts, the routers' base model
(benchmarks/results/inference-<model>.json). Reports the time
saved against the ideal saving (the routed paths' skipped blocks at the measured cost of a block, against all
the work of a step, as in benchmarks/engine.py) and the router overhead (pooling + router MLPs + the knob),
as a share of the prefill forward (where routers run) and of the whole request (prefill + new tokens).
Targets: >= 90% of the ideal saving; router overhead <= 2%. `share_of_ideal_pct` uses the medians of 15
interleaved rounds; `rounds_share_of_ideal_pct_q1_q2_q3` gives the quartiles of each round's own share (its
routed, vanilla and no-block runs back to back), the spread this machine's noise leaves within one run.

`layer_calls_skipped_pct` is the share of layer calls that no row of the batch runs: a row that skips a layer
the other rows run saves only its own share of that call, which on a memory-bound decode step (weights read
once per call, whatever the rows) is small.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from benchmarks.common import (
    TimedRouting,
    command_line,
    interleaved_samples,
    interleaved_times,
    medians,
    print_table,
    write_json,
)
from drllm_core.engine import token_batch
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model
from drllm_core.routing import read_router_config
from drllm_core.tasks.schema import examples_from_frame


def bench_batch(routed: RoutedModel, ids: Tensor, mask: Tensor, args) -> dict:
    engine, layers, batch = routed.engine, routed.loaded.num_layers, len(ids)
    routed_counts = engine.generate(ids, None, mask, 1, decide=routed.decider(mask.bool())).counts
    router_runs = []  # seconds spent in the routers, per prefill

    def timed_prefill():
        timed = TimedRouting(routed, mask.bool())
        engine.generate(ids, None, mask, 1, decide=timed.decider())
        router_runs.append(timed.seconds)

    def generate(counts=None, routed_paths=False):
        decide = routed.decider(mask.bool()) if routed_paths else None
        return engine.generate(ids, counts, mask, args.new_tokens, decide=decide)

    samples = interleaved_samples(
        {
            "vanilla": lambda: generate(engine.default_paths(batch)),
            "routed": lambda: generate(routed_paths=True),
            "no_blocks": lambda: generate(torch.zeros(batch, layers, dtype=torch.long)),
        },
        args.repeats,
    )
    times = medians(samples)
    prefill = interleaved_times({"prefill": timed_prefill}, args.repeats)
    router_seconds = statistics.median(router_runs)
    calls_run = routed_counts.max(0).values.sum().item()
    saved_share = 1 - routed_counts.sum().item() / (batch * layers)
    median_times = (times["vanilla"], times["routed"], times["no_blocks"])
    # Each round's own share of the ideal too: a round's runs ran back to back, so drift between rounds cancels.
    rounds = zip(samples["vanilla"], samples["routed"], samples["no_blocks"], strict=True)
    shares = [share_of_ideal(*round_times, saved_share) for round_times in rounds] if saved_share else []
    return {
        "batch": batch,
        "vanilla_ms": 1000 * times["vanilla"],
        "routed_ms": 1000 * times["routed"],
        "blocks_saved_pct": 100 * saved_share,
        "ideal_saving_pct": 100 * ideal_saving(times["vanilla"], times["no_blocks"], saved_share),
        "saving_pct": 100 * (1 - times["routed"] / times["vanilla"]),
        "share_of_ideal_pct": 100 * share_of_ideal(*median_times, saved_share) if saved_share else None,
        "rounds_share_of_ideal_pct_q1_q2_q3": [round(100 * q, 1) for q in statistics.quantiles(shares, n=4)]
        if shares
        else None,
        "layer_calls_skipped_pct": 100 * (1 - calls_run / layers),
        "router_us_per_layer": 1e6 * router_seconds / layers,
        "router_overhead_pct": 100 * router_seconds / prefill["prefill"],
        "router_share_of_request_pct": 100 * router_seconds / times["routed"],
    }


def ideal_saving(vanilla: float, no_blocks: float, saved_share: float) -> float:
    """The share of the time saved if skipping blocks saved exactly their share of the time blocks take."""
    return saved_share * (vanilla - no_blocks) / vanilla


def share_of_ideal(vanilla: float, routed: float, no_blocks: float, saved_share: float) -> float:
    return (1 - routed / vanilla) / ideal_saving(vanilla, no_blocks, saved_share)


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--routers", default="models/drllm")
    parser.add_argument("--model", default=None, help="default: the routers' base model")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds, at least 2")
    parser.add_argument("--knob", type=float, default=None, help="default: the routers' calibrated knob")
    parser.add_argument(
        "--prompts",
        default="data/prepared/eval_id.parquet",
        help="the test questions whose prompts are timed",
    )
    args = parser.parse_args(argv)
    if not Path(args.prompts).is_file():
        parser.error(
            f"{args.prompts} does not exist: run `dvc repro prepare` here, or pass --prompts with the "
            "eval_id.parquet of the workspace that trained the routers"
        )
    if args.repeats < 2:
        parser.error(
            f"--repeats must be at least 2 (the per-round quartiles need two rounds), got {args.repeats}"
        )
    loaded = load_model(ModelSpec(spec=args.model or read_router_config(args.routers).base_model))
    routed = RoutedModel.from_folder(loaded, args.routers, knob=args.knob)
    scorer = routed.scorer()
    examples = examples_from_frame(pd.read_parquet(args.prompts))
    pad = loaded.tokenizer.pad_token_id
    batches = [
        token_batch([scorer.prompt_ids(e) for e in examples[:size]], pad, left=True) for size in (1, 8)
    ]
    rows = [bench_batch(routed, ids, mask, args) for ids, mask in batches]
    print(
        f"model {loaded.name}, routers {args.routers}, knob {routed.knob:+g}, {torch.get_num_threads()} threads, "
        f"{args.new_tokens} new tokens"
    )
    print_table("Routed vs vanilla generation (prefill + greedy tokens)", rows)
    write_json(
        f"inference-{loaded.name}",  # one result per base model
        {
            "model": loaded.name,
            "numerics": loaded.numerics,
            "routers": args.routers,
            "args": vars(args),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
