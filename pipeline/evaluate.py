"""Stage `evaluate`: accuracy and blocks executed, Dr.LLM against honest baselines, on the same questions.

Writes data/eval/results.parquet (one row per configuration x question: prediction, gold, correctness, path,
blocks), metrics/eval.json (per configuration, set and task: accuracy with its 95% interval, blocks per token,
saved share; paired comparisons with McNemar tests), plots/eval/pareto.csv and metrics/speed.json. Every
(configuration, question) result is checkpointed, so a long evaluation resumes. One MLflow run per
configuration, tagged with the router set it evaluated. Dr.LLM (`drllm`) runs at the knob the calibrate stage
chose (metrics/knob.json, under the skip-run limit recorded there). Reads params `model`, `tasks`, `search`
(constraints), `evaluate`. Configurations are described in drllm_core/evaluation.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from drllm_core import io, tracking
from drllm_core.checkpoint import Checkpoint, checkpoint_path, content_key
from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError, DrllmError
from drllm_core.evaluation import (
    best_static_path,
    block_influence,
    compare,
    lowest_influence_path,
    operating_point,
    random_paths,
    result_rows,
    summarize,
)
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.paths import LayerPath, PathConstraints
from drllm_core.prepare import EVAL_SETS, sample
from drllm_core.routers import check_knob, routers_hash
from drllm_core.tasks.evaluator import ExampleScorer, examples_from_frame
from drllm_core.tasks.prompts import settings_for
from pipeline.common import SCORE_COLUMNS, load_params, log, parser, run, section


@dataclass
class Configuration:
    name: str
    sets: list[str]
    identity: dict  # what its results depend on besides model, tasks and data (for the checkpoint key)
    routers: str | None = None  # router folder
    knob: float = 0.0
    paths: dict[str, LayerPath] = field(default_factory=dict)  # fixed path per example id
    path: LayerPath | None = None  # one static path for every question


def routed_configuration(
    name: str, sets: list[str], folder: str, knob: float, max_skip_run: int | None
) -> Configuration:
    """Routers at a knob; keyed by everything their decisions depend on, so no stale checkpoint is reused."""
    identity = {
        "routers": routers_hash(folder),
        "knob": knob,
        "max_skip_run": max_skip_run,
    }
    return Configuration(name, sets, identity, folder, knob)


class Evaluator:
    """Scores configurations on the evaluation sets with checkpointing and progress."""

    def __init__(self, params: dict, prepared: Path, checkpoints: Path):
        self.params = params
        self.settings = section(params, "evaluate")
        self.loaded = load_model(ModelSpec.from_params(section(params, "model")))
        self.fingerprint = weights_fingerprint(self.loaded.model)
        self.task_params = params.get("tasks") or {}
        self.routed: dict[str, RoutedModel] = {}
        self.scorer = ExampleScorer(PathEngine(self.loaded.model), self.loaded.tokenizer, self.task_params)
        self.manifest = io.read_json(prepared / "manifest.json")
        self.examples = {
            name: examples_from_frame(pd.read_parquet(prepared / f"{name}.parquet")) for name in EVAL_SETS
        }
        self.search = examples_from_frame(pd.read_parquet(prepared / "search.parquet"))
        self.checkpoints = checkpoints
        self.batch_size = int(self.settings["batch_size"])
        self.constraints = PathConstraints.from_params(section(params, "search"))

    def routed_model(self, folder: str, knob: float) -> RoutedModel:
        if folder not in self.routed:
            self.routed[folder] = RoutedModel.from_folder(
                self.loaded, folder, max_skip_run=self.constraints.max_skip_run
            )
        model = self.routed[folder]
        model.knob = knob
        return model

    def run(self, config: Configuration) -> list[dict]:
        rows = []
        for set_name in config.sets:
            examples = self.examples[set_name]
            tasks = sorted({e.task for e in examples})
            key = content_key(
                config.identity,
                self.fingerprint,
                str(self.loaded.dtype),
                self.loaded.device.type,
                {t: settings_for(t, self.task_params) for t in tasks},
                self.manifest["sets"][set_name]["sha256"],
            )
            with Checkpoint(
                checkpoint_path(self.checkpoints, f"{config.name}-{set_name}", key)
            ) as checkpoint:
                todo = [e for e in examples if e.example_id not in checkpoint]
                bar = tqdm(
                    total=len(examples),
                    initial=len(examples) - len(todo),
                    desc=f"{config.name} {set_name}",
                    unit="q",
                )
                for start in range(0, len(todo), self.batch_size * 4):
                    chunk = todo[start : start + self.batch_size * 4]
                    for row in self._score(config, set_name, chunk):
                        checkpoint.add({**row, "example_id": row["example_id"]})
                    bar.update(len(chunk))
                bar.close()
                rows += [checkpoint.records[e.example_id] for e in examples]
        return rows

    def _score(self, config: Configuration, set_name: str, examples) -> list[dict]:
        if config.routers:
            routed = self.routed_model(config.routers, config.knob)
            decisions = routed.score(self.scorer, examples, self.batch_size)
        else:
            counts = torch.tensor([(config.path or config.paths[e.example_id]).counts for e in examples])
            decisions = self.scorer.score(examples, counts, self.batch_size)
        return result_rows(config.name, set_name, examples, decisions)


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--routers", default="models/routers", help="folder of router sets (mcts, chain, ...)")
    args.add_argument("--oracle", default="data/paths/mcts", help="MCTS search output (the upper bound)")
    args.add_argument("--knob", default="metrics/knob.json", help="the calibrate stage's output")
    args.add_argument("--checkpoints", default="data/eval_checkpoints")
    args.add_argument("--results", default="data/eval")
    args.add_argument("--metrics", default="metrics/eval.json")
    args.add_argument("--plots", default="plots/eval")
    args = args.parse_args()
    params = load_params(args.params)
    settings = section(params, "evaluate")
    routers_root = Path(args.routers)
    main_routers = str(routers_root / "mcts")
    point = operating_point(args.knob, main_routers)
    skip_run = PathConstraints.from_params(section(params, "search")).max_skip_run
    if point.max_skip_run != skip_run:
        raise DrllmError(
            f"{args.knob} was calibrated with search.max_skip_run {point.max_skip_run}, params.yaml now says "
            f"{skip_run}: run `dvc repro calibrate` first"
        )
    knob = point.knob
    sweep = [check_knob(value, "evaluate.knob_sweep") for value in settings.get("knob_sweep") or []]
    other_routers = settings.get("other_routers") or []
    missing = [name for name in other_routers if not (routers_root / name / "config.json").is_file()]
    if missing:
        raise ConfigError(
            f"evaluate.other_routers names router sets that {routers_root} does not hold: {missing}; each must be "
            "a router set of train.routers"
        )
    if int(settings["speed_prompts"]) < 1:
        raise ConfigError(f"evaluate.speed_prompts must be at least 1, got {settings['speed_prompts']}")
    evaluator = Evaluator(params, Path(args.prepared), Path(args.checkpoints))
    layers = evaluator.loaded.num_layers
    all_sets = list(EVAL_SETS)
    in_domain = ["eval_id"]
    started = time.perf_counter()
    results: list[dict] = []

    def evaluate(config: Configuration) -> pd.DataFrame:
        rows = evaluator.run(config)
        results.extend(rows)
        return pd.DataFrame(rows)

    evaluate(Configuration("vanilla", all_sets, {"kind": "vanilla"}, path=LayerPath.default(layers)))
    drllm = evaluate(routed_configuration("drllm", all_sets, main_routers, knob, skip_run))
    for value in [v for v in sweep if v != knob]:  # knob: the drllm row
        name = f"drllm_knob_{value:+g}"  # full precision: close sweep values never collide
        evaluate(routed_configuration(name, in_domain, main_routers, value, skip_run))
    for name in other_routers:
        evaluate(routed_configuration(f"routers_{name}", in_domain, str(routers_root / name), knob, skip_run))

    # Static baselines at Dr.LLM's depth: as many blocks as the routers save on average in-domain.
    drllm_id = drllm[drllm["set"] == "eval_id"]
    skips = max(1, round(layers - drllm_id["blocks"].mean()))
    chosen = sample(evaluator.search, int(settings["static_examples"]), int(settings["seed"]))
    influence = block_influence(evaluator.scorer, chosen)
    bi_path = lowest_influence_path(influence, skips)
    static_path, static_trace = best_static_path(evaluator.scorer, chosen, skips, evaluator.constraints)
    evaluate(Configuration("shortgpt_bi", all_sets, {"static": str(bi_path)}, path=bi_path))
    evaluate(Configuration("best_static", all_sets, {"static": str(static_path)}, path=static_path))
    saved = dict(zip(drllm_id["example_id"], layers - drllm_id["blocks"], strict=True))
    random_by_id = dict(
        zip(
            saved,
            random_paths(list(saved.values()), layers, evaluator.constraints, int(settings["seed"])),
            strict=True,
        )
    )
    evaluate(
        Configuration(
            "random_skip",
            in_domain,
            {"random": content_key(sorted((k, str(v)) for k, v in random_by_id.items()))},
            paths=random_by_id,
        )
    )

    frame = pd.DataFrame(results)
    summary = summarize(frame, layers)
    oracle = pd.read_parquet(Path(args.oracle) / "paths.parquet")
    searched = io.read_json(Path(args.oracle) / "stats.json")
    comparisons = [
        c
        for c in (
            [
                compare(frame, cfg, "vanilla", s)
                for cfg in frame["config"].unique()
                if cfg != "vanilla"
                for s in EVAL_SETS
            ]
            + [
                compare(frame, "drllm", ref, "eval_id")
                for ref in (
                    "best_static",
                    "shortgpt_bi",
                    "random_skip",
                    "routers_shuffled",
                    "routers_chain",
                    "routers_random",
                )
            ]
        )
        if c is not None
    ]
    overall = summary[summary["task"] == "all"]
    metrics = {
        "num_layers": layers,
        "routers_hash": routers_hash(main_routers),
        "knob": knob,
        "knob_calibration": point.calibration,
        "static_skips": skips,
        "shortgpt_bi_path": str(bi_path),
        "best_static_path": str(static_path),
        "best_static_trace": static_trace,
        "block_influence": influence,
        "configs": {
            f"{row.config}/{row.set}": {k: getattr(row, k) for k in (*SCORE_COLUMNS, "distinct_paths")}
            for row in overall.itertuples()
        },
        "oracle_search": {
            "n": int(searched["examples"]),
            "accuracy": searched["kept"] / searched["examples"],
            "blocks_per_token": float(
                (oracle["blocks"].sum() + layers * searched["dropped_no_correct_path"]) / searched["examples"]
            ),
        },
        "comparisons": comparisons,
        "per_task": summary.to_dict("records"),
        "wall_seconds": time.perf_counter() - started,
    }
    results_dir = Path(args.results)
    io.write_with(results_dir / "results.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    io.write_json(args.metrics, metrics)
    pareto = overall[overall["set"] == "eval_id"][
        ["config", "accuracy", "blocks_per_token", "ci_low", "ci_high"]
    ]
    io.write_with(Path(args.plots) / "pareto.csv", lambda tmp: pareto.to_csv(tmp, index=False))
    speed = measure_speed(evaluator, main_routers, settings, knob)
    io.write_json(Path(args.metrics).with_name("speed.json"), speed)
    log_runs(summary, comparisons, main_routers, routers_root, evaluator, knob)
    for row in overall.itertuples():
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


def measure_speed(evaluator: Evaluator, routers: str, settings: dict, knob: float) -> dict:
    """A small wall-clock check for the report: routed vs vanilla greedy generation, batch 1, the same number
    of new tokens for both (no early stop at EOS), after a warm-up, the two variants alternating."""
    prompts = [e.question for e in evaluator.examples["eval_id"][: int(settings["speed_prompts"])]]
    tokens = int(settings["speed_tokens"])
    routed = evaluator.routed_model(routers, knob)
    engine, tokenizer = routed.engine, evaluator.loaded.tokenizer
    timings = {"vanilla": 0.0, "drllm": 0.0}
    blocks = []

    def run(variant: str, ids: torch.Tensor):
        mask = torch.ones_like(ids)
        decide = routed.decider(mask.bool()) if variant == "drllm" else None
        return engine.generate(ids, None, mask, tokens, decide=decide)

    for index, prompt in enumerate(prompts):
        ids = torch.tensor([tokenizer(prompt).input_ids])
        for variant in timings:
            if index == 0:
                run(variant, ids)  # warm-up
            start = time.perf_counter()
            generation = run(variant, ids)
            timings[variant] += time.perf_counter() - start
            if variant == "drllm":
                blocks.append(int(generation.counts.sum()))
    layers = evaluator.loaded.num_layers
    return {
        "prompts": len(prompts),
        "new_tokens": tokens,
        "vanilla_seconds": timings["vanilla"],
        "drllm_seconds": timings["drllm"],
        "time_saved_pct": 100 * (1 - timings["drllm"] / timings["vanilla"]),
        "blocks_saved_pct": 100 * (1 - sum(blocks) / (len(blocks) * layers)),
    }


def log_runs(
    summary: pd.DataFrame,
    comparisons: list[dict],
    main_routers: str,
    routers_root: Path,
    evaluator,
    knob: float,
) -> None:
    """One MLflow run per configuration: accuracy and layers saved per set and task, linked to its routers."""
    name = tracking.registered_model_name(evaluator.loaded.name)
    for config, frame in summary.groupby("config", sort=False):
        folder = (
            main_routers
            if config.startswith("drllm")
            else str(routers_root / config.removeprefix("routers_"))
        )
        tags = {"drllm.config": config}
        if Path(folder, "config.json").is_file() and (config.startswith(("drllm", "routers_"))):
            digest = routers_hash(folder)
            tags["drllm.routers_hash"] = digest
            version = tracking.find_version(name, digest, knob if config == "drllm" else None)
            if version is not None:
                tags["drllm.registered_model"] = f"models:/{name}/{version.version}"
        with tracking.stage_run("evaluate", tags=tags, name=f"evaluate-{config}"):
            import mlflow

            for row in frame.itertuples():
                prefix = f"{row.set}.{row.task}"
                mlflow.log_metrics(
                    {
                        f"{prefix}.accuracy": row.accuracy,
                        f"{prefix}.layers_saved_pct": row.saved_pct,
                        f"{prefix}.blocks_per_token": row.blocks_per_token,
                    }
                )
            for comparison in (c for c in comparisons if c["config"] == config):
                ref = f"vs_{comparison['reference']}.{comparison['set']}"
                mlflow.log_metrics(
                    {
                        f"{ref}.difference": comparison["difference"],
                        f"{ref}.mcnemar_p": comparison["mcnemar_p"],
                    }
                )


if __name__ == "__main__":
    run(main)
