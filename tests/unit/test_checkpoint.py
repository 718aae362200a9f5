"""Checkpoints: a torn line is dropped, and a checkpoint is never resumed by other code."""

import shutil
from pathlib import Path

import drllm_core
from drllm_core.checkpoint import Checkpoint, checkpoint_path, code_version


def test_a_line_torn_by_a_crash_is_dropped_and_the_rest_resumes(tmp_path):
    path = tmp_path / "c.jsonl"
    with Checkpoint(path) as checkpoint:
        checkpoint.add({"example_id": "a", "correct": True})
        checkpoint.add({"example_id": "a", "correct": False})  # an id is recorded once
    path.write_text(path.read_text() + '{"example_id": "b", "corr')
    with Checkpoint(path) as resumed:
        assert list(resumed.records) == ["a"] and resumed.records["a"]["correct"] is True
        resumed.add({"example_id": "b", "correct": False})
    assert [line[:17] for line in path.read_text().splitlines()] == ['{"example_id": "a', '{"example_id": "b']


def test_the_checkpoint_name_changes_with_the_code(tmp_path, caplog):
    package = Path(drllm_core.__file__).parent
    copy = tmp_path / "drllm_core"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_version(copy) == code_version() and code_version() in checkpoint_path("x", "drllm", "k").name
    scoring = copy / "tasks" / "scoring.py"
    scoring.write_text(scoring.read_text() + "\n# a scoring fix\n")
    assert code_version(copy) != code_version()
    old = tmp_path / f"drllm-k-code{code_version(copy)}.jsonl"
    old.write_text("")
    with caplog.at_level("WARNING"):
        assert checkpoint_path(tmp_path, "drllm", "k") != old
    assert f"not resuming {old.name}, written by other code" in caplog.text
