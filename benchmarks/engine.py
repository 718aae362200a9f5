"""Path-engine speed on the embedded default model: `python -m benchmarks.engine`.

1. forward on the default path vs `model(...)` (overhead; target <= 3%), batch 1 and 8, 150-token prompts;
2. greedy generation of 64 tokens under a path that skips ~15% of the layers vs the default path: the time
   saved as a share of the ideal saving (target >= 90%). The ideal assumes the skipped blocks cost what an
   average block costs, against all the work of a step: block time is measured as the default step time
   minus the time of a step that runs no block (embedding, masks, final norm, lm_head, sampling);
3. prefix reuse: 8 paths sharing their first half, run as one prefix + 8 suffixes vs 8 full paths;
4. a trie of paths (`run_trie`): every single-layer skip of one prompt (the `singles` search's paths) run as
   a trie, which runs the default path's layers once up to each skip, vs every path in full in one batch.
"""

from __future__ import annotations

import torch

from benchmarks.common import command_line, interleaved_times, print_table, write_json
from drllm_core.engine import PathEngine
from drllm_core.models import ModelSpec, load_model
from drllm_core.paths import LayerPath

TEXT = (
    "The water cycle describes how water evaporates from the surface of the earth, rises into the atmosphere, "
    "cools and condenses into clouds, and falls again as precipitation. Plants take in water through their "
    "roots and release it through their leaves. Rivers carry water back to the oceans, where the sun heats it "
    "and the cycle begins again. Scientists measure rainfall, humidity and temperature to predict the weather. "
)


def prompts(tokenizer, batch: int, length: int) -> torch.Tensor:
    ids = tokenizer(TEXT * 8, return_tensors="pt").input_ids[0]
    rows = [ids[i * 7 : i * 7 + length] for i in range(batch)]  # distinct rows of equal length
    return torch.stack(rows)


def skipping_path(num_layers: int, share: float) -> LayerPath:
    """Skip round(share * L) layers spread evenly through the middle of the stack (never two in a row)."""
    skips = max(1, round(share * num_layers))
    step = (num_layers - 2) / skips
    path = LayerPath.default(num_layers)
    for i in range(skips):
        path = path.with_count(1 + int(i * step), 0)
    return path.validate(num_layers)


def bench_forward(model, engine, tokenizer, batch, length, repeats):
    ids = prompts(tokenizer, batch, length)
    times = interleaved_times(
        {
            "model": lambda: model(input_ids=ids, use_cache=False),
            "engine": lambda: engine.forward(ids),
        },
        repeats,
    )
    return {
        "test": "forward default path",
        "batch": batch,
        "model_ms": 1000 * times["model"],
        "engine_ms": 1000 * times["engine"],
        "overhead_pct": 100 * (times["engine"] / times["model"] - 1),
        "target": "<= 3%",
    }


def bench_generation(engine, tokenizer, batch, length, new_tokens, repeats, share):
    ids = prompts(tokenizer, batch, length)
    layers = engine.num_layers
    path = skipping_path(layers, share)
    no_blocks = torch.zeros(batch, layers, dtype=torch.long)

    def generate(counts):
        return lambda: engine.generate(ids, counts, max_new_tokens=new_tokens)

    times = interleaved_times(
        {
            "default": generate(engine.default_paths(batch)),
            "skip": generate(torch.tensor([path.counts] * batch)),
            "no_blocks": generate(no_blocks),
        },
        repeats,
    )
    block_time = times["default"] - times["no_blocks"]
    ideal = (path.blocks_saved / layers) * block_time / times["default"]
    achieved = 1 - times["skip"] / times["default"]
    return {
        "test": f"generate {new_tokens} tokens, skip {path.blocks_saved}/{layers}",
        "batch": batch,
        "default_ms": 1000 * times["default"],
        "skip_ms": 1000 * times["skip"],
        "no_block_step_share_pct": 100 * times["no_blocks"] / times["default"],
        "ideal_saving_pct": 100 * ideal,
        "saving_pct": 100 * achieved,
        "share_of_ideal_pct": 100 * achieved / ideal,
        "target": ">= 90% of ideal",
    }


def bench_prefix_reuse(engine, tokenizer, length, suffixes, repeats):
    ids = prompts(tokenizer, 1, length)
    layers = engine.num_layers
    split = layers // 2
    generator = torch.Generator().manual_seed(0)
    counts = torch.ones(suffixes, layers, dtype=torch.long)
    counts[:, split:] = torch.randint(0, 3, (suffixes, layers - split), generator=generator)

    def reuse():
        prefix = engine.run(engine.embed(ids), counts[:1], stop=split)
        return engine.logits(
            engine.run(prefix.select([0] * suffixes), counts), torch.full((suffixes, 1), length - 1)
        )

    def recompute():
        return engine.forward(
            ids.expand(suffixes, -1), counts, positions=torch.full((suffixes, 1), length - 1)
        )

    test = f"prefix reuse, {suffixes} suffixes after layer {split}"
    return against_recompute(engine, test, suffixes, "reuse", reuse, recompute, repeats)


def bench_trie(engine, tokenizer, length, repeats):
    ids = prompts(tokenizer, 1, length)
    layers = engine.num_layers
    paths = [LayerPath.default(layers).with_count(layer, 0).counts for layer in range(layers)]
    last = torch.full((layers, 1), length - 1)

    def trie():
        base = engine.embed(ids)
        final = engine.run_trie(base, [(0, p) for p in paths], [(0, base.hidden)] * layers)
        return engine.logits(final, last)

    def recompute():
        return engine.forward(ids.expand(layers, -1), torch.tensor(paths), positions=last)

    return against_recompute(
        engine, f"trie of the {layers} single skips", layers, "trie", trie, recompute, repeats
    )


def against_recompute(engine, test, batch, name, run, recompute, repeats):
    """`run` (reusing states) against `recompute` (every path in full): equal logits, interleaved times, and
    the ideal saving, the share of block rows `run` does not run (the engine's counter)."""
    rows, logits = {}, {}
    for variant, call in ((name, run), ("recompute", recompute)):
        before = engine.counter.rows
        logits[variant] = call()
        rows[variant] = engine.counter.rows - before
    torch.testing.assert_close(logits[name], logits["recompute"], rtol=1e-2, atol=1e-2)
    times = interleaved_times({name: run, "recompute": recompute}, repeats)
    return {
        "test": test,
        "batch": batch,
        "recompute_ms": 1000 * times["recompute"],
        f"{name}_ms": 1000 * times[name],
        "saving_pct": 100 * (1 - times[name] / times["recompute"]),
        "ideal_saving_pct": 100 * (1 - rows[name] / rows["recompute"]),
    }


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model spec")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-share", type=float, default=0.15)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    loaded = load_model(ModelSpec(spec=args.model, dtype=args.dtype))
    engine = PathEngine(loaded.model)
    forward = [
        bench_forward(loaded.model, engine, loaded.tokenizer, b, args.prompt_tokens, args.repeats)
        for b in (1, 8)
    ]
    generation = [
        bench_generation(
            engine,
            loaded.tokenizer,
            b,
            args.prompt_tokens,
            args.new_tokens,
            max(3, args.repeats // 2),
            args.skip_share,
        )
        for b in (1, 8)
    ]
    reuse = [bench_prefix_reuse(engine, loaded.tokenizer, args.prompt_tokens, 8, args.repeats)]
    trie = [bench_trie(engine, loaded.tokenizer, args.prompt_tokens, args.repeats)]
    print(f"model {loaded.name}, dtype {loaded.dtype}, {torch.get_num_threads()} threads")
    print_table("Forward: path engine on the default path vs model(...)", forward)
    print_table("Greedy generation: time saved vs the ideal saving", generation)
    print_table("Prefix reuse", reuse)
    print_table("A trie of paths", trie)
    write_json(
        "engine",
        {
            "model": loaded.name,
            "numerics": loaded.numerics,
            "args": vars(args),
            "forward": forward,
            "generation": generation,
            "prefix_reuse": reuse,
            "trie": trie,
        },
    )


if __name__ == "__main__":
    main()
