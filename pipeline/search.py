"""Stage `search`: find, per search example, layer paths that still answer correctly; label it with one.

Writes data/paths/<strategy>/paths.parquet (one row per kept example: labels, execution order, correctness,
blocks, search cost, every path scored) and stats.json. The label rule (`label_rule`, drllm_core.labels)
picks each label among the scored paths after the search, so changing it reuses the checkpoint.
Resumable: finished examples are appended to a checkpoint under data/search_checkpoints/<strategy>/ named by
a hash of everything they depend on (search params, model weights, task settings, data) and of the code; a
re-run skips them, and never reuses results computed under anything else. Reads params `model`, `tasks`,
`search`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from drllm_core import io, tracking
from drllm_core.checkpoint import Checkpoint, checkpoint_path, content_key
from drllm_core.errors import config_from
from drllm_core.labels import LabelRule, label_statistics, labelled
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.prepare import sample
from drllm_core.search import ALGORITHM_VERSION, SearchConfig
from drllm_core.search_runner import ExampleSearcher, RewardConfig, RunnerConfig, run_search
from drllm_core.tasks.evaluator import examples_from_frame
from drllm_core.tasks.prompts import settings_for
from pipeline.common import load_params, log, parser, run, section

RUNNER_KEYS = ("backend", "ray_address", "workers", "threads", "prefix_cache_mb")
REWARD_KEYS = ("reward", "margin")
STAGE_KEYS = ("strategies", "max_examples")
LABEL_KEYS = ("label_rule", "consensus_share")


def build_searcher(
    model: dict, tasks: dict, search: SearchConfig, reward: RewardConfig, cache_mb: float
) -> ExampleSearcher:
    """Loads the model: called once locally, or once inside each Ray worker."""
    return ExampleSearcher(load_model(ModelSpec.from_params(model)), tasks, search, reward, cache_mb)


def split_params(params: dict, strategy: str):
    search = dict(params)
    runner = RunnerConfig(**{k: search.pop(k) for k in RUNNER_KEYS if k in search})
    reward = RewardConfig(**{k: search.pop(k) for k in REWARD_KEYS if k in search})
    stage = {k: search.pop(k) for k in STAGE_KEYS if k in search}
    rule = LabelRule(**{k: search.pop(k) for k in LABEL_KEYS if k in search})
    other_keys = (*RUNNER_KEYS, *REWARD_KEYS, *STAGE_KEYS, *LABEL_KEYS)  # read above: named in the message
    config = config_from(SearchConfig, "search", {**search, "strategy": strategy}, ignore=other_keys)
    return config, reward, runner, stage, rule


def main() -> None:
    args = parser(__doc__)
    args.add_argument(
        "--strategy", default=None, help="mcts | chain | random (default: the first of search.strategies)"
    )
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", default=None, help="default: data/paths/<strategy>")
    args.add_argument("--checkpoints", default=None, help="default: data/search_checkpoints/<strategy>")
    args = args.parse_args()
    params = load_params(args.params)
    search_params = section(params, "search")
    strategy = args.strategy or search_params.get("strategies", ["mcts"])[0]
    config, reward, runner, stage, rule = split_params(search_params, strategy)
    out = Path(args.out or f"data/paths/{strategy}")
    checkpoints = Path(args.checkpoints or f"data/search_checkpoints/{strategy}")

    prepared = Path(args.prepared)
    frame = pd.read_parquet(prepared / "search.parquet")
    manifest = io.read_json(prepared / "manifest.json")
    examples = sample(examples_from_frame(frame), stage.get("max_examples"), config.seed)
    loaded = load_model(ModelSpec.from_params(section(params, "model")))
    task_params = params.get("tasks") or {}
    key = content_key(
        ALGORITHM_VERSION,
        config,
        reward,
        loaded.name,
        weights_fingerprint(loaded.model),
        str(loaded.dtype),
        loaded.device.type,
        {task: settings_for(task, task_params) for task in sorted({e.task for e in examples})},
        manifest["sets"]["search"]["sha256"],
    )
    started = time.perf_counter()
    with Checkpoint(checkpoint_path(checkpoints, strategy, key)) as checkpoint:
        todo = [e for e in examples if e.example_id not in checkpoint]
        log.info(
            "search %s on %d examples (%d already done, checkpoint %s), %d simulations each, backend %s",
            strategy,
            len(examples),
            len(examples) - len(todo),
            checkpoint.path,
            config.simulations,
            runner.backend,
        )
        if runner.backend == "local":
            make_searcher = functools.partial(
                ExampleSearcher, loaded, task_params, config, reward, runner.prefix_cache_mb
            )
        else:
            make_searcher = functools.partial(
                build_searcher, section(params, "model"), task_params, config, reward, runner.prefix_cache_mb
            )
        rows = {  # labelled records by example id, each labelled once
            e.example_id: labelled(checkpoint.records[e.example_id], rule)
            for e in examples
            if e.example_id in checkpoint
        }
        bar = tqdm(total=len(examples), initial=len(rows), desc=f"search {strategy}", unit="ex")
        found, kept = sum(r["wrong_to_correct"] for r in rows.values()), sum(r["kept"] for r in rows.values())

        def on_record(record: dict) -> None:
            nonlocal found, kept
            checkpoint.add(record)
            row = rows[record["example_id"]] = labelled(record, rule)
            found, kept = found + row["wrong_to_correct"], kept + row["kept"]
            bar.set_postfix(w2c=found, kept=kept)
            bar.update()

        run_search(todo, make_searcher, runner, on_record)
        bar.close()
        records = pd.DataFrame([rows[e.example_id] for e in examples])
    stats = {
        **label_statistics(records),
        "strategy": strategy,
        "label_rule": rule.label_rule,
        "wall_seconds": time.perf_counter() - started,
        "checkpoint_key": key,
    }
    with io.atomic_dir(out) as tmp:
        records[records["kept"]].to_parquet(tmp / "paths.parquet", index=False)
        io.write_json(tmp / "stats.json", stats)
    log.info(
        "kept %d of %d examples, W->C %d, mean blocks saved %.2f; wrote %s",
        stats["kept"],
        stats["examples"],
        stats["wrong_to_correct"],
        stats["mean_blocks_saved"],
        out,
    )
    with tracking.stage_run(
        "search",
        {"search": search_params, "model": params["model"]},
        {"drllm.strategy": strategy},
        name=f"search-{strategy}",
    ) as _:
        import mlflow

        mlflow.log_metrics({k: v for k, v in stats.items() if isinstance(v, int | float)})
        mlflow.log_metrics({f"label_share_{k}": v for k, v in stats["label_shares"].items()})


if __name__ == "__main__":
    run(main)
