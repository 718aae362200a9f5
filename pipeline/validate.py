"""Stage `validate`: Great Expectations guards the path labels before training.

Checks data/paths/<strategy>/paths.parquet with the suite in drllm_core/label_checks.py and writes
reports/validation/<strategy>/result.json (a DVC metric) and report.html. Exits non-zero, naming every failed
expectation and a few offending example ids, when a fail-level check fails, so `dvc repro` stops before
training. Reads params `model` (layer count), `search` (the path limits the labels were searched under) and
`validate`.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from drllm_core import io, tracking
from drllm_core.errors import DrllmError
from drllm_core.label_checks import CheckResult, ShareBounds, derived_columns, run_suite
from drllm_core.models import ModelSpec, load_config
from drllm_core.paths import PathConstraints
from pipeline.common import load_params, log, parser, run, section


class LabelsRejected(DrllmError):
    pass


def read_paths(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise LabelsRejected(
            f"{path} is not a readable parquet file ({err}); re-run the search stage"
        ) from err


def render_html(strategy: str, summary: dict, checks: list[CheckResult]) -> str:
    rows = "".join(
        f"<tr class={'ok' if c.success else c.level}><td>{html.escape(c.name)}</td><td>{c.level}</td>"
        f"<td>{'pass' if c.success else 'FAIL' if c.level == 'fail' else 'warn'}</td>"
        f"<td>{html.escape(c.description)}</td><td>{html.escape(str(c.observed if c.observed is not None else ''))}</td>"
        f"<td>{c.offending_count or ''} {html.escape(', '.join(c.offending_ids[:5]))}</td></tr>"
        for c in checks
    )
    facts = "".join(
        f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in summary.items() if k != "checks"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Label validation</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}.fail{background:#fdd}.warn{background:#ffd}.ok{background:#efe}"
        f"</style></head><body><h1>Label validation: {html.escape(strategy)}</h1><ul>{facts}</ul>"
        "<table><tr><th>check</th><th>level</th><th>result</th><th>expectation</th><th>observed</th>"
        f"<th>offending examples</th></tr>{rows}</table></body></html>"
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--paths", required=True, help="search output folder, e.g. data/paths/mcts")
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", required=True, help="report folder, e.g. reports/validation/mcts")
    args = args.parse_args()
    params = load_params(args.params)
    settings = section(params, "validate")
    strategy = Path(args.paths).name
    num_layers = load_config(ModelSpec.from_params(section(params, "model"))).num_hidden_layers
    paths = read_paths(Path(args.paths) / "paths.parquet")
    prepared = Path(args.prepared)
    search = pd.read_parquet(prepared / "search.parquet")
    evaluation = [pd.read_parquet(prepared / f"{name}.parquet") for name in ("eval_id", "eval_ood")]
    shares = {kind: ShareBounds(tuple(b["warn"]), tuple(b["fail"])) for kind, b in settings["shares"].items()}
    frame = derived_columns(paths, search, evaluation)
    constraints = PathConstraints.from_params(section(params, "search"))
    checks = run_suite(frame, num_layers, int(settings["min_examples"]), shares, constraints)
    failed = [c for c in checks if not c.success and c.level == "fail"]
    warned = [c for c in checks if not c.success and c.level == "warn"]
    summary = {
        "strategy": strategy,
        "success": not failed,
        "examples": len(paths),
        "failed_checks": len(failed),
        "warnings": len(warned),
        "wrong_to_correct_share": float(paths["wrong_to_correct"].mean())
        if "wrong_to_correct" in paths and len(paths)
        else 0.0,
        "skip_share": float(frame["skip_share"].mean()) if "skip_share" in frame and len(frame) else 0.0,
        "repeat_share": float(frame["repeat_share"].mean())
        if "repeat_share" in frame and len(frame)
        else 0.0,
    }
    out = Path(args.out)
    io.write_json(out / "result.json", {**summary, "checks": [c.__dict__ for c in checks]})
    io.write_text(out / "report.html", render_html(strategy, summary, checks))
    for check in warned:
        log.warning("warning: %s", check.message())
    with tracking.stage_run(
        "validate", {"validate": settings}, {"drllm.strategy": strategy}, name=f"validate-{strategy}"
    ):
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float | bool)})
    if failed:
        details = "\n  ".join(c.message() for c in failed)
        raise LabelsRejected(
            f"{len(failed)} label checks failed for {args.paths} (report: {out / 'report.html'}):\n  {details}"
        )
    log.info(
        "labels of %s pass %d checks (%d warnings); W->C share %.2f",
        strategy,
        len(checks),
        len(warned),
        summary["wrong_to_correct_share"],
    )


if __name__ == "__main__":
    run(main)
