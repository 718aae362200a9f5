"""Stage `search`: find, per search example, layer paths that still answer correctly; label it with one.

Writes data/paths/<strategy>/paths.parquet (one row per kept example: labels, execution order, correctness,
blocks, every path scored) and stats.json (label statistics), and what the search cost (wall time, block
executions per simulation) to metrics/timings/search-<strategy>.json, which no stage reads. Resumable: finished examples are appended to a
checkpoint under data/search_checkpoints/<strategy>/ named by everything they depend on and by the code.
Reads params `model`, `tasks`, `search` (and `runtime`: backend, Ray, threads, prefix cache).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from drllm_core import io, tracking
from drllm_core.checkpoint import Checkpoint, checkpoint_path, content_key
from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError, listed
from drllm_core.labels import label_statistics
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.prepare import sample
from drllm_core.provenance import code_version
from drllm_core.runtime import Runtime
from drllm_core.search_runner import SearchSettings, search_examples, searcher_factory, split_cost
from drllm_core.tasks.prompts import checked_tasks, settings_for
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument(
        "--strategy",
        default=None,
        help="singles | mcts | chain | random (default: the first of search.strategies)",
    )
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", default=None, help="default: data/paths/<strategy>")
    args.add_argument("--checkpoints", default=None, help="default: data/search_checkpoints/<strategy>")
    args.add_argument("--timings", default=None, help="default: metrics/timings/search-<strategy>.json")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    search_params = section(params, "search")
    strategies = listed(search_params.get("strategies"), "search.strategies")
    if not args.strategy and not strategies:
        raise ConfigError("search.strategies is empty: list at least one, e.g. [singles], or pass --strategy")
    strategy = args.strategy or strategies[0]
    settings = SearchSettings.from_params(search_params, strategy)
    runtime = Runtime.from_params(params)
    model_params = section(params, "model")
    prepared = Path(args.prepared)
    manifest = io.read_json(prepared / "manifest.json")
    task_params = checked_tasks(params, manifest)
    tracking.configure()  # an unreachable store stops the stage before it works, not after
    examples = examples_from_frame(pd.read_parquet(prepared / "search.parquet"))
    examples = sample(examples, settings.max_examples, settings.search.seed)
    loaded = load_model(ModelSpec.from_params(model_params))
    key = content_key(
        settings.search,
        settings.reward,
        loaded.name,
        weights_fingerprint(loaded.model),
        str(loaded.dtype),
        loaded.device.type,
        {task: settings_for(task, task_params) for task in sorted({e.task for e in examples})},
        manifest["sets"]["search"]["sha256"],
    )
    ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, task_params).check_lengths(examples)
    folder = Path(args.checkpoints or f"data/search_checkpoints/{strategy}")
    started = time.perf_counter()
    with Checkpoint(checkpoint_path(folder, strategy, key, code_version(["pipeline.search"]))) as checkpoint:
        log.info(
            "search %s on %d examples, %d simulations each, backend %s, checkpoint %s",
            strategy,
            len(examples),
            settings.search.simulations,
            runtime.search_backend,
            checkpoint.path,
        )
        make_searcher = searcher_factory(loaded, model_params, task_params, settings, runtime)
        records, cost = split_cost(
            search_examples(examples, make_searcher, runtime, checkpoint, settings.rule)
        )
    stats = {**label_statistics(records), "strategy": strategy, "label_rule": settings.rule.label_rule}
    with io.atomic_dir(args.out or f"data/paths/{strategy}") as tmp:
        records[records["kept"]].to_parquet(tmp / "paths.parquet", index=False)
        io.write_json(tmp / "stats.json", stats)
    timings = {"wall_seconds": time.perf_counter() - started, **cost}
    io.write_json(args.timings or f"metrics/timings/search-{strategy}.json", timings)
    log.info(
        "kept %d of %d examples, W->C %d, mean blocks saved %.2f",
        stats["kept"],
        stats["examples"],
        stats["wrong_to_correct"],
        stats["mean_blocks_saved"],
    )
    tracking.log_stage(
        "search",
        {"search": search_params, "model": model_params},
        {**stats, **{f"label_share_{k}": v for k, v in stats["label_shares"].items()}, **timings},
        {"drllm.strategy": strategy},
        name=f"search-{strategy}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
