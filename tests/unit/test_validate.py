"""The label suite: a good file passes; each corruption fails with a message naming the check and examples."""

import hashlib
import json

import pandas as pd
import pytest
import yaml

from drllm_core.errors import ConfigError
from drllm_core.label_checks import ShareBounds, ValidateSettings, derived_columns, run_suite
from drllm_core.paths import PAPER_CONSTRAINTS, LayerPath, PathConstraints
from drllm_core.tasks.schema import question_hash
from tests.conftest import run_stage

L = 6
SHARES = {
    "skip": ShareBounds(warn=(0.0, 0.3), fail=(0.0, 0.6)),
    "repeat": ShareBounds(warn=(0.0, 0.1), fail=(0.0, 0.5)),
}
LABELS = [(1, 0, 1, 1, 1, 1), (1, 1, 1, 2, 1, 1), (0, 1, 1, 0, 0, 1), (1, 1, 1, 1, 1, 1)]


def _sets():
    ids = [f"arc_easy/q{i}" for i in range(len(LABELS))]
    search = pd.DataFrame(
        {"example_id": ids, "question_hash": [question_hash("", f"question {i}") for i in range(len(ids))]}
    )
    evaluation = pd.DataFrame(
        {"example_id": ["arc_easy/test1"], "question_hash": [question_hash("", "a test question")]}
    )
    return search, evaluation


def good_paths() -> pd.DataFrame:
    search, _ = _sets()
    return pd.DataFrame(
        {
            "example_id": list(search["example_id"]),
            "task": ["arc_easy"] * len(LABELS),
            "labels": [list(c) for c in LABELS],
            "order": [LayerPath(c).order for c in LABELS],
            "kept": [True] * len(LABELS),
            "wrong_to_correct": [False, True, False, False],
            # what the search scored: the default path first, then the label (rewarded)
            "scored_labels": [[[1] * L, list(c)] for c in LABELS],
            "scored_reward": [[0.0, 1.0]] * len(LABELS),
        }
    )


def _check(paths, search=None, evaluation=None, constraints=PAPER_CONSTRAINTS):
    default_search, default_eval = _sets()
    frame = derived_columns(
        paths,
        default_search if search is None else search,
        [default_eval if evaluation is None else evaluation],
    )
    return run_suite(frame, L, 2, SHARES, constraints)


def _failed(results):
    return {r.name: r for r in results if not r.success and r.level == "fail"}


def test_a_good_file_passes():
    results = _check(good_paths())
    assert not _failed(results)
    assert {r.name for r in results} >= {
        "unique ids",
        "no leakage",
        "labels in {0,1,2}",
        "skip runs",
        "path matches labels",
        "labels were rewarded",
        "whole labels",
    }


def _corrupt(column, row, value):
    paths = good_paths()
    paths.at[row, column] = value
    return paths


@pytest.mark.parametrize(
    ("paths", "check", "offender"),
    [
        (_corrupt("labels", 1, [1, 1, 3, 1, 1, 1]), "labels at most 2", "arc_easy/q1"),
        (_corrupt("labels", 2, [1, 1, 1, 1, 1]), "label length", "arc_easy/q2"),
        (_corrupt("example_id", 3, "arc_easy/q0"), "unique ids", "arc_easy/q0"),
        (_corrupt("order", 0, [0, 1, 2, 3, 4, 5]), "path matches labels", "arc_easy/q0"),
        (_corrupt("labels", 3, [1, 0, 0, 0, 1, 1]), "skip runs", "arc_easy/q3"),
        (_corrupt("scored_reward", 2, [1.0, 0.0]), "labels were rewarded", "arc_easy/q2"),
        (_corrupt("labels", 0, [1, 1.5, 1, 1, 1, 0.5]), "whole labels", "arc_easy/q0"),
    ],
)
def test_each_corruption_fails_naming_the_check_and_the_example(paths, check, offender):
    failed = _failed(_check(paths))
    assert check in failed, sorted(failed)
    assert offender in failed[check].offending_ids
    assert offender in failed[check].message()


def test_the_path_limits_are_the_ones_the_search_ran_under():
    three_skips = _corrupt("labels", 3, [1, 0, 0, 0, 1, 1])
    three_skips.at[3, "order"] = LayerPath((1, 0, 0, 0, 1, 1)).order
    three_skips.at[3, "scored_labels"] = [
        [1] * L,
        [1, 0, 0, 0, 1, 1],
    ]  # a search under max_skip_run 3 found it
    assert "skip runs" in _failed(_check(three_skips))
    assert not _failed(_check(three_skips, constraints=PathConstraints(max_skip_run=3)))
    unlimited = {r.name for r in _check(three_skips, constraints=PathConstraints(max_skip_run=None))}
    assert "skip runs" not in unlimited
    over_budget = _failed(_check(good_paths(), constraints=PathConstraints(max_blocks=6)))
    assert over_budget["path length"].offending_ids == ["arc_easy/q1"]  # its repeat makes 7 blocks
    assert "at most 6 blocks" in over_budget["path length"].message()


def test_a_leaked_id_or_question_fails():
    search, evaluation = _sets()
    leaked_by_id = pd.concat(
        [evaluation, pd.DataFrame({"example_id": ["arc_easy/q1"], "question_hash": ["x"]})]
    )
    assert "arc_easy/q1" in _failed(_check(good_paths(), evaluation=leaked_by_id))["no leakage"].offending_ids
    same_text = pd.DataFrame(
        {"example_id": ["arc_easy/other"], "question_hash": [search.at[2, "question_hash"]]}
    )
    assert "arc_easy/q2" in _failed(_check(good_paths(), evaluation=same_text))["no leakage"].offending_ids


def test_empty_file_and_missing_column():
    assert "enough examples" in _failed(_check(good_paths().iloc[:0]))
    failed = _failed(_check(good_paths().drop(columns=["wrong_to_correct"])))
    assert "column wrong_to_correct" in failed


def test_class_shares_warn_before_they_fail():
    paths = good_paths()
    paths["labels"] = [[0, 1, 0, 1, 1, 1]] * 4
    paths["order"] = [LayerPath((0, 1, 0, 1, 1, 1)).order] * 4
    results = {r.name: r for r in _check(paths)}
    assert not results["skip share (warn)"].success and results["skip share (fail)"].success
    assert results["skip share (warn)"].observed == pytest.approx(1 / 3)


def test_the_validate_section_is_checked_before_any_work():
    section = {"min_examples": "50", "shares": {"skip": {"warn": [0.05, 0.35], "fail": [0, "0.6"]}}}
    assert ValidateSettings.from_params(section) == ValidateSettings(
        50, {"skip": ShareBounds((0.05, 0.35), (0.0, 0.6))}
    )
    bad = {
        "min_exmples": ("exactly the keys", {"min_exmples": 50, "shares": {}}),
        "whole": ("validate.min_examples` must be a whole number", {**section, "min_examples": 1.9}),
        "text": ("must be a whole number", {**section, "min_examples": "abc"}),
        "zero": ("at least 1", {**section, "min_examples": 0}),
        "class": ("skip and repeat only", {**section, "shares": {"skp": {"warn": [0, 1], "fail": [0, 1]}}}),
        "level": ("a warn and a fail range", {**section, "shares": {"skip": {"warn": [0, 1]}}}),
        "pair": ("pair of shares", {**section, "shares": {"skip": {"warn": [0.5], "fail": [0, 1]}}}),
        "order": (
            "0 <= low <= high <= 1",
            {**section, "shares": {"skip": {"warn": [0.5, 0.1], "fail": [0, 1]}}},
        ),
        "range": (
            "0 <= low <= high <= 1",
            {**section, "shares": {"skip": {"warn": [0, 1], "fail": [0, 1.5]}}},
        ),
    }
    for message, params in bad.values():
        with pytest.raises(ConfigError, match=message):
            ValidateSettings.from_params(params)


def test_stage_exits_non_zero_and_names_failures(tmp_path):
    search, evaluation = _sets()
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    search.to_parquet(prepared / "search.parquet")
    evaluation.to_parquet(prepared / "eval_id.parquet")
    evaluation.iloc[:0].to_parquet(prepared / "eval_ood.parquet")
    paths_dir = tmp_path / "paths" / "mcts"
    paths_dir.mkdir(parents=True)
    _corrupt("labels", 1, [1, 1, 3, 1, 1, 1]).to_parquet(paths_dir / "paths.parquet")
    from tests.conftest import tiny_loaded

    tiny_loaded().model.config.save_pretrained(tmp_path / "model")
    params = {
        "model": {"spec": str(tmp_path / "model")},
        "search": {"max_skip_run": 2},
        "validate": {
            "min_examples": 2,
            "shares": {k: {"warn": list(v.warn), "fail": list(v.fail)} for k, v in SHARES.items()},
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_stage(
        "validate",
        *("--params", tmp_path / "params.yaml", "--paths", paths_dir, "--prepared", prepared),
        *("--out", tmp_path / "report"),
    )
    assert done.returncode == 1
    assert (
        "labels at most 2" in done.stderr and "arc_easy/q1" in done.stderr and "Traceback" not in done.stderr
    )
    assert (tmp_path / "report" / "result.json").is_file() and (tmp_path / "report" / "report.html").is_file()
    assert not (tmp_path / "report" / "validated.json").exists()  # features never runs on rejected labels
    good_paths().to_parquet(paths_dir / "paths.parquet")
    stage = ("--params", tmp_path / "params.yaml", "--paths", paths_dir, "--prepared", prepared)
    assert run_stage("validate", *stage, "--out", tmp_path / "report").returncode == 0
    validated = json.loads((tmp_path / "report" / "validated.json").read_text())
    assert validated == {
        "paths_sha256": hashlib.sha256((paths_dir / "paths.parquet").read_bytes()).hexdigest()
    }
