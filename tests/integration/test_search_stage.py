"""The search stage: resumable after SIGKILL, one writer per checkpoint, and the same results on a real local
Ray instance. Runs on a tiny random model saved as a local model folder, so it exercises the real loading path
quickly; the kill and the Ray backend run the stage as a process, the rest in this one."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from drllm_core import io
from drllm_core.prepare import build_sets
from tests.conftest import run_stage, tiny_loaded


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-stage")
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(root / "model")
    loaded.tokenizer.save_pretrained(root / "model")
    rows = [
        {
            "id": f"q{i}",
            "question": f"What is item {i}?",
            "choices": ["alpha", "beta", "gamma"],
            "answer_index": i % 3,
        }
        for i in range(48)
    ]
    (root / "questions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    frames, manifest = build_sets(
        {"sets": {"search": [{"task": "toy", "source": "local", "path": str(root / "questions.jsonl")}]}}
    )
    (root / "prepared").mkdir()
    for name, frame in frames.items():
        frame.to_parquet(root / "prepared" / f"{name}.parquet")
    io.write_json(root / "prepared" / "manifest.json", manifest)
    return root


def _params(root, runtime=None, **search):
    params = {
        "model": {"spec": str(root / "model"), "dtype": "float32"},
        "tasks": {"defaults": {}},
        "search": {"strategies": ["mcts"], "simulations": 40, "max_examples": None, **search},
        "runtime": {"threads": 1, **(runtime or {})},
    }
    path = root / f"params-{len(list(root.glob('params-*')))}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _arguments(root, params, name):
    return [
        "--params",
        str(params),
        "--prepared",
        str(root / "prepared"),
        "--out",
        str(root / name / "paths"),
        "--checkpoints",
        str(root / name / "checkpoints"),
        "--timings",
        str(root / name / "timings.json"),
    ]


def _command(root, params, name):
    return [sys.executable, "-m", "pipeline.search", *_arguments(root, params, name)]


def _env(root):
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "RAY_AUTH_MODE": "disabled",
    }


def _paths(root, name):
    frame = pd.read_parquet(root / name / "paths" / "paths.parquet")
    return frame.sort_values("example_id").reset_index(drop=True)


def test_a_killed_search_resumes_with_nothing_lost_or_duplicated(project):
    params = _params(project)
    done = subprocess.run(
        _command(project, params, "whole"), env=_env(project), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen(
        _command(project, params, "killed"),
        env=_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint_dir = project / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        files = list(checkpoint_dir.glob("*.jsonl"))
        if files and len(files[0].read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines = files[0].read_text().splitlines()
    assert 5 <= len(lines) < 48, "the kill should land mid-run"
    resumed = subprocess.run(
        _command(project, params, "killed"), env=_env(project), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(lines)} of 48 examples already done" in resumed.stderr
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == len({r["example_id"] for r in records}) == 48
    pd.testing.assert_frame_equal(_paths(project, "whole"), _paths(project, "killed"))


def test_a_second_search_on_a_checkpoint_in_use_is_refused(project):
    params = _params(project, simulations=200)
    first = subprocess.Popen(
        _command(project, params, "busy"), env=_env(project), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((project / "busy" / "checkpoints").glob("*.jsonl.lock")):
        time.sleep(0.05)
    second = run_stage("search", *_arguments(project, params, "busy"))
    first.kill()
    first.wait()
    assert second.returncode == 1 and "another process is writing the checkpoint" in second.stderr


def test_other_search_params_never_reuse_a_checkpoint_and_runtime_params_do(project):
    first = _params(project, simulations=12)
    for params in (
        first,
        _params(project, simulations=10),
        _params(project, runtime={"threads": 2}, simulations=12),
    ):
        assert run_stage("search", *_arguments(project, params, "keys")).returncode == 0
    assert len(list((project / "keys" / "checkpoints").glob("*.jsonl"))) == 2  # threads: the same work


def test_ray_backend_gives_the_same_paths_as_local(project):
    local = subprocess.run(
        _command(project, _params(project), "local"), env=_env(project), capture_output=True, text=True
    )
    assert local.returncode == 0, local.stderr
    ray_params = _params(project, runtime={"search_backend": "ray", "workers": 2})
    distributed = subprocess.run(
        _command(project, ray_params, "ray"), env=_env(project), capture_output=True, text=True
    )
    assert distributed.returncode == 0, distributed.stderr
    pd.testing.assert_frame_equal(_paths(project, "local"), _paths(project, "ray"))


def test_a_new_label_rule_relabels_from_the_checkpoint_without_searching(project, caplog):
    frames, logs = {}, {}
    for rule in ("shortest", "consensus"):
        arguments = _arguments(
            project, _params(project, label_rule=rule, consensus_share=0.6), f"rule-{rule}"
        )
        arguments[arguments.index("--checkpoints") + 1] = str(
            project / "rule-checkpoints"
        )  # one shared folder
        with caplog.at_level("INFO"):
            done = run_stage("search", *arguments)
        assert done.returncode == 0, done.stderr
        frames[rule], logs[rule] = _paths(project, f"rule-{rule}"), caplog.text
        caplog.clear()
    assert "48 of 48 examples already done" in logs["consensus"]  # the second rule searched nothing
    shortest, consensus = frames["shortest"], frames["consensus"]
    assert list(shortest["example_id"]) == list(consensus["example_id"])  # the same examples are kept
    assert (consensus["blocks"] >= shortest["blocks"]).all()  # consensus never labels a shorter path
    for row in consensus.itertuples():  # every label is a path the search scored with reward 1
        scored = {tuple(p): r for p, r in zip(row.scored_labels, row.scored_reward, strict=True)}
        assert scored[tuple(row.labels)] == 1.0
