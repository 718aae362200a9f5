"""Evaluation baselines and summaries on a tiny model."""

import dataclasses
import os

import pandas as pd
import pytest
import torch

from drllm_core import io
from drllm_core.engine import PathEngine
from drllm_core.errors import DrllmError
from drllm_core.evaluation import (
    OperatingPoint,
    best_static_path,
    block_influence,
    compare,
    lowest_influence_path,
    operating_point,
    random_paths,
    result_rows,
    summarize,
)
from drllm_core.paths import PathConstraints
from drllm_core.routers import RouterConfig, RouterSet, routers_hash
from drllm_core.stats import paired_comparison, wilson_interval
from drllm_core.tasks.evaluator import ExampleScorer
from drllm_core.tasks.schema import Example
from pipeline.evaluate import routed_configuration
from tests.conftest import run_stage, tiny_loaded

EXAMPLES = [
    Example(f"t/{i}", "t", f"Which word comes {i} times?", ["one", "two", "three"], i % 3) for i in range(6)
]


def _scorer():
    loaded = tiny_loaded()
    return ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})


def test_block_influence_and_lowest_influence_pruning():
    influence = block_influence(_scorer(), EXAMPLES[:3], batch_size=2)
    assert len(influence) == 6 and all(0 <= v <= 2 for v in influence)
    path = lowest_influence_path([0.5, 0.1, 0.9, 0.05, 0.3, 0.7], 2)
    assert path.counts == (1, 0, 1, 0, 1, 1)


def test_best_static_path_is_greedy_and_valid():
    constraints = PathConstraints()
    path, trace = best_static_path(_scorer(), EXAMPLES, 3, constraints)
    assert path.blocks == 3 and path.is_valid(6, constraints) and len(trace) == 3
    assert all(step["examples"] == 6 for step in trace)


def test_random_paths_skip_the_asked_number_of_layers():
    paths = random_paths([0, 1, 2, 3, -1], 6, PathConstraints(), seed=0)
    assert [p.blocks_saved for p in paths] == [0, 1, 2, 3, 0]
    assert all(p.is_valid(6, PathConstraints()) for p in paths)


def test_summaries_and_paired_comparison():
    scorer = _scorer()
    decisions = scorer.score(EXAMPLES)
    frame = pd.DataFrame(result_rows("vanilla", "eval_id", EXAMPLES, decisions))
    counts = torch.tensor([[1, 0, 1, 1, 1, 1]] * len(EXAMPLES))
    other = pd.DataFrame(result_rows("static", "eval_id", EXAMPLES, scorer.score(EXAMPLES, counts)))
    both = pd.concat([frame, other])
    summary = summarize(both, 6)
    row = summary[(summary["config"] == "static") & (summary["task"] == "all")].iloc[0]
    assert row["blocks_per_token"] == 5 and row["saved_pct"] == pytest.approx(100 / 6) and row["n"] == 6
    comparison = compare(both, "static", "vanilla", "eval_id")
    assert comparison["n"] == 6 and -1 <= comparison["difference"] <= 1


def test_paired_statistics():
    same = paired_comparison([True, False] * 50, [True, False] * 50)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and not same["significant"]
    better = paired_comparison([True] * 100, [True] * 80 + [False] * 20)
    assert better["difference"] == pytest.approx(0.2) and better["significant"] and better["ci_low"] > 0.1
    low, high = wilson_interval(0, 10)
    assert low == 0 and 0.2 < high < 0.35


def test_knob_choice_meets_the_compute_target_with_the_least_skipping():
    from drllm_core.evaluation import choose_knob_from

    table = [
        {"knob": 0.0, "accuracy": 0.387, "blocks_saved": 3.63},
        {"knob": 0.1, "accuracy": 0.380, "blocks_saved": 1.51},
        {"knob": 0.12, "accuracy": 0.383, "blocks_saved": 1.11},
        {"knob": 0.14, "accuracy": 0.403, "blocks_saved": 0.70},
    ]
    assert choose_knob_from(table, 1.0) == 0.12  # not 0.0, the most accurate by a noisy 0.4 points
    assert choose_knob_from(table, 0.5) == 0.14
    assert choose_knob_from(table, 5.0) == 0.0  # nothing saves enough: the one saving the most


def test_knob_calibration_scores_every_grid_value():
    from drllm_core.evaluation import calibrate_knob
    from drllm_core.inference import RoutedModel
    from drllm_core.routers import RouterConfig, RouterSet

    scorer = _scorer()
    routed = RoutedModel(tiny_loaded(), RouterSet(RouterConfig(6, 64, 8, 4)))
    routed.engine = scorer.engine
    knob, table = calibrate_knob(scorer, routed, EXAMPLES, [-1.0, 0.5], min_blocks_saved=1.0, batch_size=4)
    assert [row["knob"] for row in table] == [-1.0, 0.5]
    assert table[1]["blocks_saved"] == 0.0 and table[0]["blocks_saved"] > 1.0  # -1 skips all it may
    assert knob == -1.0  # the only knob saving a block


def test_routed_results_are_keyed_by_everything_routing_depends_on(tmp_path):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "r")
    base = routed_configuration("drllm", ["eval_id"], str(tmp_path / "r"), 0.2, 2)
    assert base.identity == routed_configuration("x", ["eval_ood"], str(tmp_path / "r"), 0.2, 2).identity
    for other in (
        routed_configuration("drllm", ["eval_id"], str(tmp_path / "r"), 0.1, 2),
        routed_configuration("drllm", ["eval_id"], str(tmp_path / "r"), 0.2, 3),
    ):
        assert other.identity != base.identity


def test_the_calibrate_stage_refuses_bad_knobs_and_its_knob_must_match_the_routers(tmp_path):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "r")
    pd.DataFrame([dataclasses.asdict(e) for e in EXAMPLES]).to_parquet(tmp_path / "search.parquet")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    def calibrate(knob, grid=(0.0, 0.1)):
        settings = {"knob": knob, "examples": 10, "grid": list(grid)}
        params = {"search": {"max_examples": None, "seed": 0}, "calibrate": settings}
        io.write_json(tmp_path / "params.json", params)  # JSON is YAML
        return run_stage(
            "calibrate",
            *("--params", tmp_path / "params.json", "--prepared", tmp_path, "--routers", tmp_path / "r"),
            *("--out", tmp_path / "k.json"),
            env=env,
        )

    out_of_range = calibrate(1.5)
    assert (
        out_of_range.returncode == 1
        and "calibrate.knob (auto, or a number) must be a number in [-1, 1], got 1.5" in out_of_range.stderr
    )
    assert "got 'atuo'" in calibrate("atuo").stderr
    assert "calibrate.grid is empty" in calibrate("auto", grid=()).stderr
    assert "calibrate.grid must be a number in [-1, 1], got 2" in calibrate("auto", grid=(0.0, 2)).stderr
    nothing_held_out = calibrate("auto")  # the search used every search question
    assert (
        nothing_held_out.returncode == 1
        and "search questions the search did not use" in nothing_held_out.stderr
    )
    assert not (tmp_path / "k.json").exists()
    fixed = calibrate(0.1)
    assert fixed.returncode == 0, fixed.stderr
    written = io.read_json(tmp_path / "k.json")
    assert written == {
        "routers_hash": routers_hash(tmp_path / "r"),
        "knob": 0.1,
        "max_skip_run": 2,
        "examples": 0,
        "calibration": [],
    }
    assert operating_point(str(tmp_path / "k.json"), str(tmp_path / "r")) == OperatingPoint(0.1, 2, [])
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=5)).save(tmp_path / "other")
    with pytest.raises(DrllmError, match="not found: run `dvc repro calibrate`"):
        operating_point(str(tmp_path / "missing.json"), str(tmp_path / "r"))
    with pytest.raises(DrllmError, match="calibrated for other routers"):
        operating_point(str(tmp_path / "k.json"), str(tmp_path / "other"))
    io.write_json(tmp_path / "old.json", {k: v for k, v in written.items() if k != "max_skip_run"})
    with pytest.raises(DrllmError, match="does not record the skip-run limit"):
        operating_point(str(tmp_path / "old.json"), str(tmp_path / "r"))
