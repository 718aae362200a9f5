"""Checkpoints: a torn line is dropped, one writer at a time, and a checkpoint is never resumed by other code."""

import pytest

from drllm_core.checkpoint import Checkpoint, CheckpointBusy, checkpoint_path


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


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "c.jsonl"
    with Checkpoint(path) as first:
        with pytest.raises(CheckpointBusy, match="another process is writing the checkpoint"):
            Checkpoint(path)
        first.add({"example_id": "a"})
    with Checkpoint(path) as again:
        assert list(again.records) == ["a"]


def test_another_code_version_starts_afresh_and_says_so(tmp_path, caplog):
    old = tmp_path / "search-k-codeaaaa.jsonl"
    old.write_text("")
    with caplog.at_level("WARNING"):
        assert checkpoint_path(tmp_path, "search", "k", "bbbb") == tmp_path / "search-k-codebbbb.jsonl"
    assert f"not resuming {old.name}, written by other code" in caplog.text
