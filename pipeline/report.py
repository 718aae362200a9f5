"""Stage `report`: reports/report.md and reports/report.html with figures in reports/figures/, and
reports/summary.md, the headline tables the README includes (`python scripts/sync_readme.py` copies them).

Reads the outputs of search, train, calibrate and evaluate (metrics/eval.json, metrics/calibration.json,
data/eval/results.parquet, metrics/train/*.json, data/paths/*/stats.json) and links the MLflow runs they
logged. Reads params `search.strategies`, `train.routers` and `calibrate.routers` (and `runtime.mlflow_ui`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from drllm_core import io, report, tracking
from drllm_core.runtime import Runtime
from drllm_core.tasks.registry import TASKS
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--out", default="reports")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    runs = tracking.latest_runs(Runtime.from_params(params).mlflow_ui)
    out = Path(args.out)
    figures = out / "figures"
    evaluation = io.read_json("metrics/eval.json")
    calibration = io.read_json("metrics/calibration.json")
    results = pd.read_parquet("data/eval/results.parquet")
    search_stats = {
        s: io.read_json(f"data/paths/{s}/stats.json") for s in section(params, "search")["strategies"]
    }
    training = {
        name: io.read_json(f"metrics/train/{name}.json") for name in section(params, "train")["routers"]
    }
    layers = evaluation["num_layers"]
    report.pareto_figure(evaluation, figures / "pareto.png")
    report.routing_figure(
        results, {name: spec.family for name, spec in TASKS.items()}, layers, figures / "routing.png"
    )
    report.labels_figure(search_stats, figures / "labels.png")
    drawn = ["pareto", "routing", "labels"]
    served = training[section(params, "calibrate")["routers"]]
    if "validation" in served:  # class routers: their confusion matrix
        report.confusion_figure(served["validation"]["confusion"], figures / "confusion.png")
        drawn.append("confusion")
    sections = report.report_sections(evaluation, calibration, search_stats, training, runs, drawn)
    markdown, page = report.render(sections, "drllm report")
    io.write_text(out / "report.md", markdown)
    io.write_text(out / "report.html", page)
    io.write_text(out / "summary.md", report.summary_markdown(evaluation))
    log.info("wrote %s, %s and %s", out / "report.md", out / "report.html", out / "summary.md")


if __name__ == "__main__":
    raise SystemExit(main())
