"""Stage `evaluate`: accuracy and blocks executed, Dr.LLM against honest baselines, on the same questions.

Writes data/eval/results.parquet (one row per configuration x question: prediction, gold, correctness, path,
blocks), data/eval/generation.parquet (routed against vanilla greedy generation, per prompt), metrics/eval.json
(per configuration, set and task: accuracy with its 95% interval, agreement with vanilla, blocks per token,
saved share; paired comparisons with McNemar tests; generation agreement), metrics/headline.json (the few
flat figures `dvc exp show` compares) and plots/eval/pareto.csv; a routed-vs-vanilla timing
smoke check goes to metrics/timings/speed.json, which no stage reads. Every (configuration, question) result
is checkpointed, so a long evaluation resumes. One MLflow run per configuration. Dr.LLM is the calibrated
router folder (models/drllm) at its knob; the configurations are described in drllm_core/evaluation.py.
Reads params `model`, `tasks`, `search` (the path limits of the static baselines) and `evaluate` (and
`runtime.batch_size`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from drllm_core import io, tracking
from drllm_core.engine import PathEngine
from drllm_core.evaluation import (
    EvaluateSettings,
    EvaluationRunner,
    check_prompt_format,
    evaluate_routers,
    headline,
    labels_folder,
    log_runs,
    metrics_document,
    pareto_rows,
    router_folders,
)
from drllm_core.generation_check import generation_check, speed_check
from drllm_core.labels import scored_paths
from drllm_core.models import ModelSpec, load_model
from drllm_core.paths import PathConstraints
from drllm_core.prepare import EVAL_SETS, sample
from drllm_core.provenance import code_version
from drllm_core.runtime import Runtime
from drllm_core.tasks.prompts import checked_tasks
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--drllm", default="models/drllm", help="the calibrated routers")
    args.add_argument("--routers", default="models/routers", help="folder of the trained router sets")
    args.add_argument(
        "--paths", default="data/paths", help="search outputs (the served routers' labels: the oracle)"
    )
    args.add_argument("--checkpoints", default="data/eval_checkpoints")
    args.add_argument("--results", default="data/eval")
    args.add_argument("--metrics", default="metrics/eval.json")
    args.add_argument("--headline", default="metrics/headline.json", help="flat figures for dvc exp show")
    args.add_argument("--plots", default="plots/eval")
    args.add_argument("--timings", default="metrics/timings/speed.json")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    settings = EvaluateSettings.from_params(section(params, "evaluate"))
    constraints = PathConstraints.from_params(section(params, "search"))
    runtime = Runtime.from_params(params)
    other = router_folders(args.routers, settings.other_routers)  # checked before the model loads
    labels = labels_folder(args.drllm, args.paths)
    tracking.configure()
    prepared = Path(args.prepared)
    manifest = io.read_json(prepared / "manifest.json")
    task_params = checked_tasks(params, manifest)
    sets = {name: examples_from_frame(pd.read_parquet(prepared / f"{name}.parquet")) for name in EVAL_SETS}
    tasks = {e.task for examples in sets.values() for e in examples}
    check_prompt_format([args.drllm, *other.values()], task_params, sorted(tasks))
    oracle = pd.read_parquet(labels / "paths.parquet")
    searched = io.read_json(labels / "stats.json")
    search_frame = pd.read_parquet(prepared / "search.parquet")
    labelled = examples_from_frame(search_frame[search_frame["example_id"].isin(set(oracle["example_id"]))])
    loaded = load_model(ModelSpec.from_params(section(params, "model")))
    scorer = ExampleScorer(
        PathEngine(loaded.model),
        loaded.tokenizer,
        task_params,
        generation_batch_size=runtime.generation_batch_size,
    )
    scorer.check_lengths([e for examples in sets.values() for e in examples])
    runner = EvaluationRunner(
        loaded,
        scorer,
        sets,
        {name: manifest["sets"][name]["sha256"] for name in EVAL_SETS},
        Path(args.checkpoints),
        code_version(["pipeline.evaluate"]),
        runtime.batch_size,
    )
    known = scored_paths(oracle)
    evaluation = evaluate_routers(runner, args.drllm, other, labelled, settings, constraints, known)
    io.write_with(
        Path(args.results) / "results.parquet", lambda tmp: evaluation.results.to_parquet(tmp, index=False)
    )
    routed = runner.routed(args.drllm, evaluation.knob)
    questions = sample(sets["eval_id"], settings.generation_questions, settings.seed)
    problems = [e for e in sets["eval_ood"] if not e.choices]  # generated answers with a reference
    generation, generated = generation_check(
        routed, scorer, questions, problems, settings.generation_tokens, runtime.generation_batch_size
    )
    io.write_with(
        Path(args.results) / "generation.parquet",
        lambda tmp: pd.DataFrame(generated).to_parquet(tmp, index=False),
    )
    document = metrics_document(
        evaluation, loaded.num_layers, args.drllm, oracle, searched, generation, loaded.numerics
    )
    io.write_json(args.metrics, document)
    io.write_json(args.headline, headline(document))
    io.write_with(
        Path(args.plots) / "pareto.csv", lambda tmp: pareto_rows(evaluation).to_csv(tmp, index=False)
    )
    speed = speed_check(routed, scorer, sets["eval_id"][: runtime.speed_prompts], runtime.speed_tokens)
    io.write_json(args.timings, speed)
    log_runs(evaluation, tracking.registered_model_name(loaded.name), generation)
    for row in evaluation.summary[evaluation.summary["task"] == "all"].itertuples():
        log.info(
            "%-22s %-8s acc %.3f [%.3f, %.3f]  blocks/token %.2f  saved %.1f%%",
            row.config,
            row.set,
            row.accuracy,
            row.ci_low,
            row.ci_high,
            row.blocks_per_token,
            row.saved_pct,
        )


if __name__ == "__main__":
    raise SystemExit(main())
