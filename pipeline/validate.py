"""Stage `validate`: Great Expectations guards the path labels before training.

Checks data/paths/<strategy>/paths.parquet with the suite in drllm_core/label_checks.py and writes
reports/validation/<strategy>/result.json (a DVC metric) and report.html, and, when every fail-level check
passes, validated.json (the hash of the labels that passed), which the features stage depends on: a rewording
of a check reruns validation, not training. Exits non-zero, naming every failed expectation and a few
offending example ids, so `dvc repro` stops before training. Reads params `model` (layer count), `search`
(the path limits the labels were searched under) and `validate`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from drllm_core import io, tracking
from drllm_core.errors import DrllmError
from drllm_core.label_checks import (
    ValidateSettings,
    derived_columns,
    render_html,
    run_suite,
    summarize_checks,
)
from drllm_core.models import ModelSpec, load_config
from drllm_core.paths import PathConstraints
from pipeline.common import load_params, log, parser, run, section


class LabelsRejected(DrllmError):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--paths", required=True, help="search output folder, e.g. data/paths/mcts")
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", required=True, help="report folder, e.g. reports/validation/mcts")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    raw = section(params, "validate")
    settings = ValidateSettings.from_params(raw)
    strategy = Path(args.paths).name
    tracking.configure()
    num_layers = load_config(ModelSpec.from_params(section(params, "model"))).num_hidden_layers
    labels_file = Path(args.paths) / "paths.parquet"
    try:
        paths = pd.read_parquet(labels_file)
    except (OSError, ValueError) as err:
        raise LabelsRejected(
            f"{labels_file} is not a readable parquet file ({err}); re-run the search stage"
        ) from err
    prepared = Path(args.prepared)
    search = pd.read_parquet(prepared / "search.parquet")
    evaluation = [pd.read_parquet(prepared / f"{name}.parquet") for name in ("eval_id", "eval_ood")]
    frame = derived_columns(paths, search, evaluation)
    constraints = PathConstraints.from_params(section(params, "search"))
    checks = run_suite(frame, num_layers, settings.min_examples, settings.shares, constraints)
    summary = summarize_checks(strategy, paths, frame, checks)
    out = Path(args.out)
    io.write_json(out / "result.json", {**summary, "checks": [c.__dict__ for c in checks]})
    io.write_text(out / "report.html", render_html(strategy, summary, checks))
    for check in checks:
        if not check.success and check.level == "warn":
            log.warning("warning: %s", check.message())
    tracking.log_stage(
        "validate",
        {"validate": raw},
        summary,
        {"drllm.strategy": strategy},
        name=f"validate-{strategy}",
    )
    failed = [c for c in checks if not c.success and c.level == "fail"]
    if failed:
        (out / "validated.json").unlink(missing_ok=True)
        details = "\n  ".join(c.message() for c in failed)
        raise LabelsRejected(
            f"{len(failed)} label checks failed for {args.paths} (report: {out / 'report.html'}):\n  {details}"
        )
    io.write_json(
        out / "validated.json", {"paths_sha256": hashlib.sha256(labels_file.read_bytes()).hexdigest()}
    )
    log.info(
        "labels of %s pass %d checks (%d warnings); W->C share %.2f",
        strategy,
        len(checks),
        summary["warnings"],
        summary["wrong_to_correct_share"],
    )


if __name__ == "__main__":
    raise SystemExit(main())
