"""Stage `calibrate`: the MCTS routers' operating point, the routing knob they are registered and evaluated at.

With `calibrate.knob: auto` the routers route `examples` search questions the search did not use (held out
from the labels; never the test sets) at every knob of `grid`, and the knob that skips least while saving at
least `min_blocks_saved` blocks per token is chosen (drllm_core.evaluation.choose_knob_from says why not the
most accurate one). A number instead of auto is used as it is. Writes metrics/knob.json, the routers'
operating point (drllm_core.evaluation.OperatingPoint: the routers' hash, the knob, the skip-run limit
`search.max_skip_run`, the calibration table): `register` stores it in the registered model, so the version
users load serves where `evaluate` measured and `promote` gated. Reads params `model`, `tasks`, `search`
(which questions it used, the skip-run limit) and `calibrate`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from drllm_core import io, tracking
from drllm_core.errors import ConfigError, DrllmError
from drllm_core.evaluation import calibrate_knob, held_out_search_questions
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model
from drllm_core.paths import PathConstraints
from drllm_core.routers import check_knob, routers_hash
from drllm_core.tasks.evaluator import examples_from_frame
from pipeline.common import load_params, log, parser, run, section


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--routers", default="models/routers/mcts")
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", default="metrics/knob.json")
    args = args.parse_args()
    params = load_params(args.params)
    settings, search = section(params, "calibrate"), section(params, "search")
    digest = routers_hash(args.routers)
    skip_run = PathConstraints.from_params(search).max_skip_run
    table, held_out = [], []
    if settings["knob"] == "auto":
        grid = [check_knob(value, "calibrate.grid") for value in settings.get("grid") or []]
        if not grid:
            raise ConfigError("calibrate.grid is empty: list the knobs to try, e.g. [0.0, 0.1, 0.12, 0.14]")
        search_set = examples_from_frame(pd.read_parquet(Path(args.prepared) / "search.parquet"))
        held_out = held_out_search_questions(search_set, search, int(settings["examples"]))
        if not held_out:
            raise DrllmError(
                "calibrate.knob: auto needs search questions the search did not use: lower search.max_examples "
                "or set calibrate.knob to a number"
            )
        loaded = load_model(ModelSpec.from_params(section(params, "model")))
        routed = RoutedModel.from_folder(loaded, args.routers, max_skip_run=skip_run)
        knob, table = calibrate_knob(
            routed.scorer(params.get("tasks")),
            routed,
            held_out,
            grid,
            float(settings["min_blocks_saved"]),
            int(settings["batch_size"]),
        )
        log.info("knob %+g chosen on %d held-out search questions", knob, len(held_out))
    else:
        knob = check_knob(settings["knob"], "calibrate.knob (auto, or a number)")
    io.write_json(
        args.out,
        {
            "routers_hash": digest,
            "knob": knob,
            "max_skip_run": skip_run,
            "examples": len(held_out),
            "calibration": table,
        },
    )
    with tracking.stage_run("calibrate", {"calibrate": settings}, {"drllm.routers_hash": digest}):
        import mlflow

        mlflow.log_metric("knob", knob)
        for step, row in enumerate(table):
            mlflow.log_metrics(
                {"calibration.accuracy": row["accuracy"], "calibration.blocks_saved": row["blocks_saved"]},
                step=step,
            )


if __name__ == "__main__":
    run(main)
