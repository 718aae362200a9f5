"""Speed at the shapes users run: `python -m benchmarks.scale`.

Randomly initialised models with the real configs of Llama-3.2-1B and Llama-3.2-3B (width, heads, KV heads,
MLP width, 128k vocabulary, tied embeddings), run by the project's engine with a router set of random
weights whose decisions are replaced by fixed per-row paths, so the skipped share is known while the routers
still do all their work. Depth is cut to `--layers` decoder layers (the shapes' own depth is reported): every
figure below is a ratio between layers of the real width, which depth does not change, and a full-depth 3B
forward over 8 x 1000 tokens would not fit this benchmark's 20 minutes on a 2-core CPU. Per shape:

  router overhead   the routers' time inside a routed prefill, as a share of it (batch 1 and 8, short and
                    long prompts); target <= 2% on the 3B shape
  prefill saving    routed prefill against vanilla, as a share of the ideal saving (the skipped blocks' share
                    of the forward's work, embedding and lm_head included: see benchmarks.inference); rows of
                    a batch take different paths; target >= 90% of the ideal
  decode saving     whole requests of an 8-token prompt and `--new-tokens` greedy tokens (decode-bound);
                    batch 1 against the ideal (target >= 90%); batch 8 against two ideals, the per-row
                    average of skipped blocks and the layers no row of the batch runs; and 16 prompts on
                    two paths served in batches of 8, in arrival order or grouped by path
                    (RoutedModel.generate(group_by_path=True))
  search cost       on the full-depth 3B shape: seconds and block evaluations per MCTS simulation and the
                    prefix cache's peak per example on real search questions (`data/prepared`, the default
                    tokenizer), and a projection of the paper's search (4,000 questions x 50 simulations)

Variants run in interleaved rounds (medians; ratios within one run). `--dtype auto` by default, as the
pipeline resolves it: bf16 where the CPU runs it natively (AVX512-BF16 or AMX), else fp32: emulated bf16
matmuls are several times slower than fp32 when compute-bound, which would flatter the router overhead.
The record holds the benchmark's own wall time (the issue's budget: 20 minutes on a 2-core CPU).
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, LlamaConfig

from benchmarks.common import (
    TimedRouting,
    command_line,
    interleaved_samples,
    medians,
    print_table,
    write_json,
)
from benchmarks.inference import ideal_saving, share_of_ideal
from drllm_core.engine import PathEngine
from drllm_core.inference import RoutedModel, rows_by_path
from drllm_core.io import read_yaml
from drllm_core.models import LoadedModel, ModelSpec, load_model, resolve_dtype
from drllm_core.rewards import PathRewards
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, Routing
from drllm_core.search import SearchConfig, search
from drllm_core.search_runner import example_rng
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer

SEARCH_QUESTIONS = "data/prepared/search.parquet"
LLAMA_3_2 = {  # what Llama-3.2-1B and -3B share (their config.json on the hub)
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
}
SHAPES = {
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
    },
    "llama-3.2-3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
}


def random_model(shape: str, layers: int | None, dtype: torch.dtype) -> LoadedModel:
    """A random model of the shape's config, with `layers` decoder layers (None: the shape's own)."""
    torch.manual_seed(0)
    values = {**LLAMA_3_2, **SHAPES[shape]}
    if layers is not None:
        values["num_hidden_layers"] = layers
    model = AutoModelForCausalLM.from_config(LlamaConfig(**values), attn_implementation="sdpa", dtype=dtype)
    return LoadedModel(model.eval().requires_grad_(False), None, ModelSpec(spec=f"random:{shape}"), shape)


def random_routers(loaded: LoadedModel) -> RoutedModel:
    """Class routers with random weights (the paper's shapes: bottleneck 128, 8 windows), no path limits."""
    config = RouterConfig(
        loaded.num_layers,
        loaded.model.config.hidden_size,
        routing=Routing(max_skip_run=None, max_blocks=None),
    )
    return RoutedModel(loaded, RouterSet(config), knob=0.0, enforce_constraints=False)


def forced_paths(layers: int, batch: int, share: float, seed: int = 0) -> Tensor:
    """(batch, layers) counts: each row skips round(share * layers) layers drawn at random from the middle
    (never the first or last layer), a different draw per row."""
    generator = torch.Generator().manual_seed(seed)
    skips = max(1, round(share * layers))
    counts = torch.ones(batch, layers, dtype=torch.long)
    for row in range(batch):
        counts[row, 1 + torch.randperm(layers - 2, generator=generator)[:skips]] = 0
    return counts


def random_prompts(vocab: int, batch: int, length: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    return ids, torch.ones_like(ids)


def router_overhead(routed: RoutedModel, batch: int, length: int, repeats: int) -> dict:
    """The routers' share of a routed prefill (default paths, so the forward is whole): the time inside the
    routers, and the routed prefill against a plain one in interleaved rounds, which also counts what routing
    costs outside the routers (a layer-by-layer schedule). A batch over 2,000 tokens runs once and routed only:
    its forward is the benchmark's longest step, and the routers' share falls with the tokens."""
    engine = routed.engine
    ids, mask = random_prompts(engine.config.vocab_size, batch, length)
    timed = TimedRouting(routed, mask.bool(), engine.default_paths(batch))
    inside: list[float] = []

    def routed_prefill():
        timed.seconds = 0.0
        engine.generate(ids, None, mask, 1, decide=timed.decider())
        inside.append(timed.seconds)

    long = batch * length > 2000
    variants = (
        {"routed": routed_prefill}
        if long
        else {
            "routed": routed_prefill,
            "plain": lambda: engine.generate(ids, None, mask, 1),
        }
    )
    samples = interleaved_samples(variants, 1 if long else repeats, warmup=0)
    times = medians(samples)
    shares = [r / p for r, p in zip(inside, samples["routed"], strict=True)]
    return {
        "batch": batch,
        "prompt_tokens": length,
        "prefill_ms": 1000 * times["routed"],
        "router_us_per_layer": 1e6 * statistics.median(inside) / engine.num_layers,
        "router_overhead_pct": 100 * statistics.median(shares),
        "routed_vs_plain_pct": None if long else 100 * (times["routed"] / times["plain"] - 1),
    }


def prefill_saving(routed: RoutedModel, batch: int, length: int, share: float, repeats: int) -> dict:
    engine, layers = routed.engine, routed.engine.num_layers
    ids, mask = random_prompts(engine.config.vocab_size, batch, length)
    counts = forced_paths(layers, batch, share)
    timed = TimedRouting(routed, mask.bool(), counts)
    none = torch.zeros(batch, layers, dtype=torch.long)
    samples = interleaved_samples(
        {
            "vanilla": lambda: engine.generate(ids, None, mask, 1),
            "routed": lambda: engine.generate(ids, None, mask, 1, decide=timed.decider()),
            "no_blocks": lambda: engine.generate(ids, none, mask, 1),
        },
        repeats,
        warmup=0,  # main warms up every kernel before the first saving is timed
    )
    times = medians(samples)
    saved = 1 - counts.sum().item() / counts.numel()
    ideal = ideal_saving(times["vanilla"], times["no_blocks"], saved)
    achieved = 1 - times["routed"] / times["vanilla"]
    return {
        "batch": batch,
        "prompt_tokens": length,
        "distinct_paths": len({tuple(r) for r in counts.tolist()}),
        "vanilla_ms": 1000 * times["vanilla"],
        "routed_ms": 1000 * times["routed"],
        "blocks_saved_pct": 100 * saved,
        "ideal_saving_pct": 100 * ideal,
        "saving_pct": 100 * achieved,
        "share_of_ideal_pct": 100 * achieved / ideal,
        "rounds_share_of_ideal_min_max_pct": _round_range(
            zip(samples["vanilla"], samples["routed"], samples["no_blocks"], strict=True), saved
        ),
    }


def _round_range(rounds, saved: float) -> list[float]:
    """The lowest and highest share of the ideal among rounds (each round's runs ran back to back)."""
    shares = [100 * share_of_ideal(vanilla, routed, none, saved) for vanilla, routed, none in rounds]
    return [round(min(shares), 1), round(max(shares), 1)]


def decode_saving(
    routed: RoutedModel, batch: int, length: int, new_tokens: int, share: float, repeats: int
) -> dict:
    """Whole requests of a short prompt and `new_tokens` greedy tokens (decode-bound: the prompt is a few
    tokens, and nothing is subtracted, which would add two runs' noise) against vanilla and its ideal, rows
    on different paths. At batch > 1 also 2 x batch prompts on two paths served in batches of `batch`: in
    arrival order (each batch mixes both paths) or grouped by path (RoutedModel.generate(group_by_path=True):
    routed prefills decide the paths, then each batch holds one path)."""
    engine, layers = routed.engine, routed.engine.num_layers
    ids, mask = random_prompts(engine.config.vocab_size, batch, length)
    different = forced_paths(layers, batch, share)
    none = torch.zeros(batch, layers, dtype=torch.long)
    runs = {
        "vanilla": lambda: engine.generate(ids, None, mask, new_tokens),
        "different_paths": lambda: engine.generate(ids, different, mask, new_tokens),
        "no_blocks": lambda: engine.generate(ids, none, mask, new_tokens),
    }
    if batch > 1:
        pool, pool_mask = random_prompts(engine.config.vocab_size, 2 * batch, length, seed=1)
        two = different[torch.arange(2 * batch) % 2]  # arrival order alternates rows 0's and 1's paths
        arrived = [list(range(start, start + batch)) for start in (0, batch)]
        timed = [TimedRouting(routed, pool_mask[rows].bool(), two[rows]) for rows in arrived]

        def served(paths: Tensor | None, batches: list[list[int]]):
            for rows in batches:
                engine.generate(
                    pool[rows], None if paths is None else paths[rows], pool_mask[rows], new_tokens
                )

        def grouped():
            for rows, routing in zip(arrived, timed, strict=True):  # the routers decide the paths
                engine.generate(pool[rows], None, pool_mask[rows], 1, decide=routing.decider())
            served(two, list(rows_by_path(two).values()))

        runs["pool_vanilla"] = lambda: served(None, arrived)
        runs["pool_arrival_order"] = lambda: served(two, arrived)
        runs["pool_grouped"] = grouped
    samples = interleaved_samples(runs, repeats, warmup=0)
    times = medians(samples)
    per_row = 1 - different.sum().item() / different.numel()
    by_every_row = 1 - different.max(0).values.sum().item() / layers
    ideal = ideal_saving(times["vanilla"], times["no_blocks"], per_row)
    achieved = 1 - times["different_paths"] / times["vanilla"]
    rounds = zip(samples["vanilla"], samples["different_paths"], samples["no_blocks"], strict=True)
    row = {
        "batch": batch,
        "vanilla_ms_per_token": 1000 * times["vanilla"] / new_tokens,
        "no_block_share_pct": 100 * times["no_blocks"] / times["vanilla"],
        "blocks_saved_pct": 100 * per_row,
        "per_row_ideal_pct": 100 * ideal,
        "every_row_ideal_pct": 100 * ideal_saving(times["vanilla"], times["no_blocks"], by_every_row),
        "saving_pct": 100 * achieved,
        "share_of_per_row_ideal_pct": 100 * achieved / ideal,
        "rounds_share_min_max_pct": _round_range(rounds, per_row),
    }
    if batch > 1:
        for name in ("pool_arrival_order", "pool_grouped"):
            row[f"{name}_saving_pct"] = 100 * (1 - times[name] / times["pool_vanilla"])
    return row


def search_cost(shape: str, dtype: torch.dtype, params: dict, examples: int, simulations: int) -> dict:
    """The MCTS search of params.yaml on the shape at full depth: the search's own block counter and clock,
    and the prefix cache's size at the end of each example, which is its peak (states are only evicted
    when the cache is full, and the cap is the largest it ever holds)."""
    tokenizer = load_model(ModelSpec.from_params(params["model"])).tokenizer  # real prompts, real lengths
    loaded = random_model(shape, None, dtype)
    scorer = ExampleScorer(PathEngine(loaded.model), tokenizer, params.get("tasks") or {})
    search_params = {k: v for k, v in params["search"].items() if k in SearchConfig.__dataclass_fields__}
    config = SearchConfig(**{**search_params, "strategy": "mcts", "simulations": simulations})
    questions = examples_from_frame(pd.read_parquet(SEARCH_QUESTIONS))[:examples]
    layers, rows = loaded.num_layers, []
    for example in questions:
        rewards = PathRewards(scorer, example, "margin", float(params["search"].get("margin", 0.0)))
        start = time.perf_counter()
        result = search(rewards, layers, config, example_rng(config.seed, example.example_id))
        seconds = time.perf_counter() - start
        rows.append(
            {
                "seconds_per_simulation": seconds / result.simulations,
                "layer_evals_per_simulation": rewards.layer_evaluations / result.simulations,
                "peak_cache_mb": rewards.prefix_cache_bytes / 2**20,
                "prompt_tokens": len(scorer.pack(example).input_ids),  # the packed row (all choices)
            }
        )
    summary = {key: statistics.mean(r[key] for r in rows) for key in rows[0]}
    block_params = sum(p.numel() for p in loaded.model.model.layers[0].parameters())
    del loaded, scorer
    gc.collect()
    return {
        "shape": shape,
        "layers": layers,
        "examples": len(rows),
        "simulations": simulations,
        "block_params": block_params,
        **summary,
        "evals_per_sim_over_L": summary["layer_evals_per_simulation"] / layers,
    }


def projection(cost: dict, gpu_tflops: float, utilisation: float, block_call_ms: float) -> dict:
    """The paper's search (4,000 questions x 50 simulations) on one GPU from the measured block evaluations per
    simulation and prompt length: a projection, not a measurement. A block call takes the longer of its
    matmuls (2 FLOPs per parameter and token) at `utilisation` of the GPU's dense bf16 peak, and a fixed
    `block_call_ms` (kernel launches: a search's calls are a few short rows, too small to fill a GPU)."""
    blocks = 4000 * 50 * cost["layer_evals_per_simulation"]
    compute_ms = 1000 * 2 * cost["block_params"] * cost["prompt_tokens"] / (gpu_tflops * 1e12 * utilisation)
    return {
        "paper_questions": 4000,
        "paper_simulations": 50,
        "block_evaluations": blocks,
        "assumed_gpu_bf16_tflops": gpu_tflops,
        "assumed_utilisation": utilisation,
        "assumed_block_call_ms": block_call_ms,
        "compute_ms_per_block": compute_ms,
        "projected_gpu_hours": blocks * max(compute_ms, block_call_ms) / 1000 / 3600,
    }


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers of the speed models")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument(
        "--prompt-tokens", default="150,1000", help="router overhead prompts; prefill uses the first"
    )
    parser.add_argument("--decode-prompt-tokens", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens timed after the prompt")
    parser.add_argument("--skip-share", type=float, default=0.25, help="share of layers each row skips")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per measurement")
    parser.add_argument("--params", default="params.yaml", help="the search settings and tokenizer")
    parser.add_argument("--search-examples", type=int, default=1, help="0: no search cost")
    parser.add_argument("--search-simulations", type=int, default=10)
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="projection: H100 SXM dense bf16")
    parser.add_argument(
        "--gpu-utilisation", type=float, default=0.3, help="projection: share of that reached"
    )
    parser.add_argument(
        "--gpu-block-call-ms", type=float, default=0.2, help="projection: a launch-bound block call"
    )
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}: choose from {sorted(SHAPES)}")
    if args.layers < 3 or args.new_tokens < 2 or args.repeats < 1:
        parser.error("--layers must be at least 3, --new-tokens at least 2 and --repeats at least 1")
    if args.search_examples and not Path(SEARCH_QUESTIONS).exists():
        parser.error(
            f"the search cost needs {SEARCH_QUESTIONS}: run `dvc repro prepare`, or pass --search-examples 0"
        )
    started = time.perf_counter()
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    lengths = [int(t) for t in args.prompt_tokens.split(",")]
    overhead, prefill, decode, searches = [], [], [], []
    for shape in shapes:
        loaded = random_model(shape, args.layers, dtype)
        routed = random_routers(loaded)
        tag = {"shape": shape, "layers": f"{args.layers} of {SHAPES[shape]['num_hidden_layers']}"}
        router_overhead(routed, 1, lengths[0], 1)  # warm-up: the first call of every kernel
        for length in lengths:
            for batch in (1, 8):
                overhead.append({**tag, **router_overhead(routed, batch, length, args.repeats)})
                print(overhead[-1], flush=True)
        for batch in (1, 8):
            prefill.append(
                {**tag, **prefill_saving(routed, batch, lengths[0], args.skip_share, args.repeats)}
            )
            print(prefill[-1], flush=True)
            decode.append(
                {
                    **tag,
                    **decode_saving(
                        routed,
                        batch,
                        args.decode_prompt_tokens,
                        args.new_tokens,
                        args.skip_share,
                        args.repeats,
                    ),
                }
            )
            print(decode[-1], flush=True)
        del loaded, routed
        gc.collect()
    if args.search_examples:
        params = read_yaml(args.params)
        cost = search_cost(shapes[-1], dtype, params, args.search_examples, args.search_simulations)
        searches.append(
            {**cost, **projection(cost, args.gpu_tflops, args.gpu_utilisation, args.gpu_block_call_ms)}
        )
    print(f"\n{dtype}, {torch.get_num_threads()} threads, {args.layers} decoder layers of real width")
    print_table("Router overhead: the routers' share of a routed prefill (target <= 2% on 3B)", overhead)
    print_table("Prefill: routed saving against the ideal, rows on different paths (target >= 90%)", prefill)
    print_table("Decode: saving against the per-row and every-row ideals", decode)
    if searches:
        print_table("Search cost (full depth) and a projection of the paper's search (PROJECTION)", searches)
    write_json(
        "scale",
        {
            "args": vars(args),
            "dtype": str(dtype).removeprefix("torch."),
            "wall_seconds": time.perf_counter() - started,
            "router_overhead": overhead,
            "prefill": prefill,
            "decode": decode,
            "search": searches,
        },
    )


if __name__ == "__main__":
    main()
