"""Stage `calibrate`: the routing knob of the served routers (`calibrate.routers`), chosen on held-out
search questions.

With `calibrate.knob: auto` the routers route `examples` search questions the search did not use (never a
test set) at every knob of `grid`, and the knob that skips least while saving at least `min_blocks_saved`
blocks per token is chosen (drllm_core.calibration.choose_knob_from says why not the most accurate one). A
number instead of auto is used as it is. Writes --out (models/drllm): the routers with that knob in their
routing, the folder that register, evaluate and the drllm CLI use; and metrics/calibration.json (the knob and
the table). Reads params `model`, `search` (which questions the search used) and `calibrate` (and
`runtime.batch_size`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from drllm_core import io, tracking
from drllm_core.calibration import CalibrateSettings, calibrate_knob, held_out_search_questions
from drllm_core.checkpoint import content_key
from drllm_core.errors import DrllmError
from drllm_core.evaluation import EvaluationRunner
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model
from drllm_core.provenance import code_version
from drllm_core.routers import RouterSet
from drllm_core.routing import routers_hash
from drllm_core.runtime import Runtime
from drllm_core.search_runner import SearchSettings
from drllm_core.tasks.schema import examples_from_frame
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--routers", default=None, help="the trained routers (default: calibrate.routers)")
    args.add_argument("--prepared", default="data/prepared")
    args.add_argument("--out", default="models/drllm", help="the calibrated routers")
    args.add_argument("--metrics", default="metrics/calibration.json")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    settings = CalibrateSettings.from_params(section(params, "calibrate"))
    search = SearchSettings.from_params(section(params, "search"), "singles")  # any strategy samples alike
    args.routers = args.routers or f"models/routers/{settings.routers}"
    tracking.configure()
    routers = RouterSet.load(args.routers)
    table, held_out = [], []
    if settings.knob is None:
        search_set = examples_from_frame(pd.read_parquet(Path(args.prepared) / "search.parquet"))
        held_out = held_out_search_questions(search_set, search, settings.examples)
        if not held_out:
            raise DrllmError(
                "calibrate.knob: auto needs search questions the search did not use: lower search.max_examples "
                "or set calibrate.knob to a number"
            )
        loaded = load_model(ModelSpec.from_params(section(params, "model")))
        routed = RoutedModel.from_folder(loaded, args.routers)  # checks the routers against the model
        routed.scorer().check_lengths(held_out)
        with tempfile.TemporaryDirectory() as checkpoints:  # minutes of work: nothing to resume
            runner = EvaluationRunner(
                loaded,
                routed.scorer(),
                {"calibration": held_out},
                {"calibration": content_key(sorted(e.example_id for e in held_out))},
                Path(checkpoints),
                code_version(["pipeline.calibrate"]),
                Runtime.from_params(params).batch_size,
            )
            knob, table = calibrate_knob(runner, args.routers, settings.grid, settings.min_blocks_saved)
        log.info("knob %+g chosen on %d held-out search questions", knob, len(held_out))
    else:
        knob = settings.knob
    calibrated = routers.with_knob(knob)
    calibrated.save(args.out)
    digest = routers_hash(args.out)
    io.write_json(
        args.metrics, {"knob": knob, "routers_hash": digest, "examples": len(held_out), "calibration": table}
    )
    tracking.log_stage(
        "calibrate",
        {"calibrate": section(params, "calibrate")},
        {"knob": knob},
        {tracking.ROUTERS_HASH_TAG: digest},
        history=[
            {
                "calibration.accuracy": r["accuracy"],
                "calibration.agreement": r["agreement"],
                "calibration.blocks_saved": r["blocks_saved"],
            }
            for r in table
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
