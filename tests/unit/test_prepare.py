"""The prepare stage: deterministic sets, no leakage, malformed rows counted and bounded, clear errors."""

import json

import pandas as pd
import pytest
import yaml

from drllm_core.errors import ConfigError
from drllm_core.prepare import PrepareError, build_sets, sample
from drllm_core.tasks.schema import COLUMNS, Example
from tests.conftest import run_stage


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _question(i, text=None):
    return {
        "id": f"q{i}",
        "question": text or f"Question number {i}?",
        "choices": ["yes", "no"],
        "answer_index": i % 2,
    }


def _params(search, evaluation, **extra):
    return {
        "seed": 3,
        "max_malformed_share": 0.0,
        "sets": {
            "search": [{"task": "mine", "source": "local", "path": search}],
            "eval_id": [{"task": "mine", "source": "local", "path": evaluation}],
            **extra,
        },
    }


def test_sets_are_deterministic_and_leak_free(tmp_path):
    search = _write(tmp_path / "s.jsonl", [_question(i) for i in range(20)])
    # q3 shares an id with the search file; "QUESTION number 5" is q5's text in another case
    evaluation = _write(
        tmp_path / "e.jsonl", [_question(3), {**_question(100, "QUESTION number 5?"), "id": "e5"}]
    )
    frames, manifest = build_sets(_params(search, evaluation))
    again, manifest_again = build_sets(_params(search, evaluation))
    assert manifest == manifest_again and frames["search"].equals(again["search"])
    assert list(frames["search"].columns) == COLUMNS
    assert "mine/q3" not in set(frames["search"]["example_id"])
    assert "mine/q5" not in set(frames["search"]["example_id"])
    assert manifest["removed_for_overlap"]["search"] == 2
    assert manifest["sets"]["search"]["count"] == 18 and manifest["sets"]["eval_id"]["count"] == 2


def test_sampling_does_not_depend_on_source_order():
    examples = [Example(f"t/{i}", "t", f"q{i}", ["a", "b"], 0) for i in range(50)]
    first = [e.example_id for e in sample(examples, 10, seed=1)]
    assert first == [e.example_id for e in sample(examples[::-1], 10, seed=1)]
    assert first != [e.example_id for e in sample(examples, 10, seed=2)]


def test_malformed_rows_above_the_threshold_fail_naming_task_and_row(tmp_path):
    rows = [_question(i) for i in range(9)] + [
        {"id": "bad", "question": "q", "choices": ["a", "b"], "answer_index": 7}
    ]
    search = _write(tmp_path / "s.jsonl", rows)
    evaluation = _write(tmp_path / "e.jsonl", [_question(50)])
    with pytest.raises(
        PrepareError, match=r"task mine \(local validation, set search\): 1 of 10 rows.*row 9"
    ):
        build_sets(_params(search, evaluation))
    frames, manifest = build_sets({**_params(search, evaluation), "max_malformed_share": 0.2})
    assert len(frames["search"]) == 9
    assert manifest["malformed"]["search/mine"]["malformed"] == 1


def test_bad_params_are_named(tmp_path):
    search = _write(tmp_path / "s.jsonl", [_question(1)])
    with pytest.raises(PrepareError, match="unknown source 'web'"):
        build_sets({"sets": {"search": [{"task": "mine", "source": "web"}]}})
    with pytest.raises(KeyError, match="unknown task 'arc_hard'"):
        build_sets({"sets": {"search": [{"task": "arc_hard"}]}})
    with pytest.raises(PrepareError, match="unknown sets"):
        build_sets({"sets": {"train": []}})
    with pytest.raises(
        ConfigError, match=r"unknown keys in params.yaml `prepare.sets.search \(mine\)`: \['sizes'\]"
    ):
        build_sets({"sets": {"search": [{"task": "mine", "source": "local", "path": search, "sizes": 3}]}})
    with pytest.raises(PrepareError, match="limit must be at least 1, or left out for every example; got -5"):
        build_sets({"sets": {"search": [{"task": "mine", "source": "local", "path": search, "limit": -5}]}})
    with pytest.raises(PrepareError, match="`size` is now called `limit`"):
        build_sets({"sets": {"search": [{"task": "mine", "source": "local", "path": search, "size": 1}]}})
    frames, _ = build_sets(
        {"sets": {"search": [{"task": "mine", "source": "local", "path": search, "limit": "1"}]}}
    )
    assert len(frames["search"]) == 1  # a number written as a string
    for bad, message in (
        ({"seed": 1.9}, "`prepare.seed` must be a whole number, got 1.9"),
        ({"seeed": 5}, r"unknown keys in params.yaml `prepare`: \['seeed'\]"),
        ({"max_malformed_share": "abc"}, "`prepare.max_malformed_share` must be a number, got 'abc'"),
        ({"max_malformed_share": 2}, r"max_malformed_share must lie in \[0, 1\], got 2"),
        ({"sets": {"search": {"task": "mine"}}}, "prepare.sets.search must be a list"),
    ):
        with pytest.raises((ConfigError, PrepareError), match=message):
            build_sets({"sets": {}, **bad})


def _run_stage(params_file, out):
    return run_stage("prepare", "--params", params_file, "--out", out)


def test_stage_writes_atomically_and_keeps_old_output_on_error(tmp_path):
    search = _write(tmp_path / "s.jsonl", [_question(i) for i in range(5)])
    evaluation = _write(tmp_path / "e.jsonl", [_question(40)])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"prepare": _params(search, evaluation)}))
    out = tmp_path / "prepared"
    done = _run_stage(params_file, out)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "eval_id.parquet",
        "eval_ood.parquet",
        "manifest.json",
        "search.parquet",
        "shots.parquet",
    ]
    assert len(pd.read_parquet(out / "search.parquet")) == 5
    params_file.write_text(yaml.safe_dump({"prepare": {"sets": {"search": [{"task": "nope"}]}}}))
    failed = _run_stage(params_file, out)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: unknown task 'nope'") and "Traceback" not in failed.stderr
    assert len(pd.read_parquet(out / "search.parquet")) == 5  # the previous output is intact
