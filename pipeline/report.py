"""Stage `report`: reports/report.md and reports/report.html with figures in reports/figures/.

Reads the outputs of search, train and evaluate (metrics/eval.json, data/eval/results.parquet,
metrics/train/*.json, data/paths/*/stats.json, metrics/speed.json) and links the MLflow runs they logged.
Reads params `search.strategies`, `train.routers` and `report`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from drllm_core import io, report, tracking
from drllm_core.tasks.registry import TASKS
from pipeline.common import SCORE_COLUMNS, load_params, log, parser, run, section


def latest_runs(ui: str) -> list[tuple[str, str]]:
    """(run name, UI link) of the newest run of every stage execution name in the drllm experiment."""
    mlflow = tracking.configure()
    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], order_by=["attributes.start_time DESC"])
    if runs.empty:
        return []
    latest = runs.drop_duplicates("tags.mlflow.runName")
    return [
        (
            f"{row['tags.mlflow.runName']} ({row['run_id'][:8]})",
            f"{ui}/#/experiments/{row['experiment_id']}/runs/{row['run_id']}",
        )
        for _, row in latest.sort_values("tags.mlflow.runName").iterrows()
    ]


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--out", default="reports")
    args = args.parse_args()
    params = load_params(args.params)
    settings = section(params, "report")
    out = Path(args.out)
    figures = out / "figures"
    evaluation = io.read_json("metrics/eval.json")
    results = pd.read_parquet("data/eval/results.parquet")
    strategies = section(params, "search")["strategies"]
    search_stats = {s: io.read_json(f"data/paths/{s}/stats.json") for s in strategies}
    router_sets = list(section(params, "train")["routers"])
    training = {name: io.read_json(f"metrics/train/{name}.json") for name in router_sets}
    speed = io.read_json("metrics/speed.json")
    layers = evaluation["num_layers"]

    report.pareto_figure(evaluation, figures / "pareto.png")
    report.routing_figure(
        results, {name: spec.family for name, spec in TASKS.items()}, layers, figures / "routing.png"
    )
    report.labels_figure(search_stats, figures / "labels.png")
    report.confusion_figure(training["mcts"]["validation"]["confusion"], figures / "confusion.png")

    config_rows = [
        {"configuration": key.split("/")[0], "set": key.split("/")[1], **values}
        for key, values in evaluation["configs"].items()
    ]
    config_rows.append(
        {
            "configuration": "oracle_search",
            "set": "search",
            "n": evaluation["oracle_search"]["n"],
            "accuracy": evaluation["oracle_search"]["accuracy"],
            "ci_low": "",
            "ci_high": "",
            "blocks_per_token": evaluation["oracle_search"]["blocks_per_token"],
            "saved_pct": 100 * (1 - evaluation["oracle_search"]["blocks_per_token"] / layers),
            "distinct_paths": "",
        }
    )
    comparison_rows = [
        {
            "configuration": c["config"],
            "versus": c["reference"],
            "set": c["set"],
            "n": c["n"],
            "difference": c["difference"],
            "ci_low": c["ci_low"],
            "ci_high": c["ci_high"],
            "mcnemar_p": c["mcnemar_p"],
            "verdict": ("better" if c["difference"] > 0 else "worse") if c["significant"] else "within noise",
        }
        for c in evaluation["comparisons"]
    ]
    task_rows = [
        {k: r[k] for k in ("config", "set", "task", *SCORE_COLUMNS)}
        for r in evaluation["per_task"]
        if r["config"] in ("vanilla", "drllm") and r["task"] != "all"
    ]
    search_rows = [
        {
            "strategy": s,
            **{
                k: v[k]
                for k in (
                    "examples",
                    "kept",
                    "kept_share",
                    "wrong_to_correct",
                    "mean_blocks_saved",
                    "layer_evaluations_per_simulation",
                    "simulations_per_example",
                    "search_seconds",
                )
            },
        }
        for s, v in search_stats.items()
    ]
    router_rows = [
        {
            "routers": name,
            **{
                k: m[k]
                for k in (
                    "train_examples",
                    "val_examples",
                    "val_macro_f1",
                    "majority_macro_f1",
                    "prior_macro_f1",
                    "val_accuracy",
                    "majority_accuracy",
                    "train_seconds",
                )
            },
        }
        for name, m in training.items()
    ]
    speed_rows = [
        {
            k: speed[k]
            for k in (
                "prompts",
                "new_tokens",
                "vanilla_seconds",
                "drllm_seconds",
                "time_saved_pct",
                "blocks_saved_pct",
            )
        }
    ]
    drllm = next(
        (
            c
            for c in evaluation["comparisons"]
            if c["config"] == "drllm" and c["reference"] == "vanilla" and c["set"] == "eval_id"
        ),
        None,
    )
    headline = (
        f"In-domain, Dr.LLM scores {drllm['difference'] * 100:+.1f} points against the vanilla model "
        f"(paired 95% interval {drllm['ci_low'] * 100:+.1f} to {drllm['ci_high'] * 100:+.1f}, McNemar p = {drllm['mcnemar_p']:.3f}) "
        f"while executing {evaluation['configs']['drllm/eval_id']['blocks_per_token']:.2f} of {layers} blocks per token "
        f"(knob {evaluation.get('knob', 0.0):+g})."
        if drllm
        else "Dr.LLM was not evaluated."
    )
    calibration_rows = [
        {"knob": r["knob"], "accuracy": r["accuracy"], "blocks_saved": r["blocks_saved"]}
        for r in evaluation.get("knob_calibration", [])
    ]
    static_rows = [
        {"baseline": "shortgpt_bi", "path": evaluation["shortgpt_bi_path"]},
        {"baseline": "best_static", "path": evaluation["best_static_path"]},
    ]
    sections = [
        ("Summary", "text", headline),
        ("Accuracy and compute", "figure", "pareto"),
        ("Results per configuration", "table", (config_rows, "results")),
        ("Paired comparisons", "table", (comparison_rows, "comparisons")),
        ("Vanilla and Dr.LLM per task", "table", (task_rows, "per-task")),
        ("Knob calibration on held-out search questions", "table", (calibration_rows, "calibration")),
        ("Static baselines (layer counts, 0 = skipped)", "table", (static_rows, "static")),
        ("Routing patterns", "figure", "routing"),
        ("Search", "table", (search_rows, "search")),
        ("Label classes", "figure", "labels"),
        ("Routers", "table", (router_rows, "routers")),
        ("Router confusion", "figure", "confusion"),
        ("Speed", "table", (speed_rows, "speed")),
        ("MLflow runs", "links", latest_runs(settings["mlflow_ui"])),
    ]
    markdown, page = report.render(sections, "drllm report")
    io.write_text(out / "report.md", markdown)
    io.write_text(out / "report.html", page)
    log.info("wrote %s and %s", out / "report.md", out / "report.html")


if __name__ == "__main__":
    run(main)
