"""The routing knob of a router set, chosen on held-out search questions (never on a test set)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from drllm_core.comparison import summarize
from drllm_core.errors import ConfigError, config_from, listed
from drllm_core.evaluation import Configuration, EvaluationRunner
from drllm_core.paths import LayerPath
from drllm_core.prepare import sample
from drllm_core.routing import check_knob, router_set_names
from drllm_core.search_runner import SearchSettings
from drllm_core.tasks.schema import Example

log = logging.getLogger(__name__)


def held_out_search_questions(
    search_set: Sequence[Example], search: SearchSettings, count: int
) -> list[Example]:
    """`count` search-set questions the search did not use (its `max_examples` sample by `seed`, read as the
    search stage reads them): labels never saw them, so the knob is chosen on them."""
    searched = {e.example_id for e in sample(search_set, search.max_examples, search.search.seed)}
    return sample([e for e in search_set if e.example_id not in searched], count, 1)


def calibrate_knob(
    runner: EvaluationRunner, folder: str, grid: Sequence[float], min_blocks_saved: float
) -> tuple[float, list[dict]]:
    """Choose the routing knob of the routers in `folder` on the runner's `calibration` set, held-out search
    questions (never a test set): every grid value's accuracy, agreement with vanilla and blocks saved,
    scored together with vanilla (drllm_core.evaluation), then `choose_knob_from`."""
    configs = [Configuration.static("vanilla", ["calibration"], LayerPath.default(runner.loaded.num_layers))]
    configs += [Configuration.routed(f"knob_{knob:+g}", ["calibration"], folder, knob) for knob in grid]
    rows = runner.run_many(configs)
    summary = summarize(pd.DataFrame([r for group in rows.values() for r in group]), runner.loaded.num_layers)
    overall = summary[summary["task"] == "all"].set_index("config")
    table = [
        {
            "knob": float(knob),
            "accuracy": float(overall.loc[f"knob_{knob:+g}", "accuracy"]),
            "agreement": float(overall.loc[f"knob_{knob:+g}", "agreement"]),
            "blocks_saved": float(overall.loc[f"knob_{knob:+g}", "blocks_saved"]),
        }
        for knob in grid
    ]
    for row in table:
        log.info("calibration: knob %+g, accuracy %.3f, agreement %.3f, blocks saved %.2f", *row.values())
    return choose_knob_from(table, min_blocks_saved), table


def choose_knob_from(table: Sequence[dict], min_blocks_saved: float) -> float:
    """Among the grid values saving at least `min_blocks_saved` blocks per token, the one that skips least
    (ties: the more accurate); when none saves that much, the one saving the most. Not the most accurate one:
    on a few hundred questions neighbouring grid values differ in accuracy by noise while blocks saved are
    measured precisely. Picking by accuracy chose knob 0 over +0.12 on the default model by one question in
    300 (0.3 points); knob 0 then saved 3.6 blocks at -8.5 points in-domain."""
    enough = [row for row in table if row["blocks_saved"] >= min_blocks_saved]
    if not enough:
        return max(table, key=lambda r: r["blocks_saved"])["knob"]
    return min(enough, key=lambda r: (r["blocks_saved"], -r["accuracy"]))["knob"]


@dataclass(frozen=True)
class CalibrateSettings:
    """params.yaml's `calibrate` section; `knob` None stands for auto."""

    routers: str = "costs"  # the router set of train.routers that is served (its folder: dvc.yaml)
    knob: float | None = None
    grid: tuple[float, ...] = (0.0,)
    examples: int = 300
    min_blocks_saved: float = 1.0

    @classmethod
    def from_params(cls, params: dict) -> CalibrateSettings:
        values = dict(params)
        knob = values.pop("knob", "auto")
        knob = None if knob == "auto" else check_knob(knob, "calibrate.knob (auto, or a number)")
        grid = tuple(
            check_knob(v, "calibrate.grid") for v in listed(values.pop("grid", None), "calibrate.grid")
        )
        if knob is None and not grid:
            raise ConfigError("calibrate.grid is empty: list the knobs to try, e.g. [0.0, 0.1, 0.12, 0.14]")
        settings = config_from(cls, "calibrate", {**values, "knob": knob, "grid": grid})
        router_set_names([settings.routers], "calibrate.routers")
        if settings.examples < 1:
            raise ConfigError(f"calibrate.examples must be at least 1, got {settings.examples}")
        return settings
