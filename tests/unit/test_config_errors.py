"""Bad params.yaml values and typos: a ConfigError naming the key and what is allowed, before any model loads,
and from a stage `error: ...` with exit status 1 and no traceback."""

import re

import pytest

from drllm_core import io
from drllm_core.errors import ConfigError
from drllm_core.routers import RouterConfig, RouterSet, check_knob, routers_hash
from drllm_core.search_runner import RewardConfig
from drllm_core.training import TrainConfig
from pipeline.search import split_params
from tests.conftest import run_stage


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: split_params({"simulatons": 5}, "mcts"),
            r"unknown keys in params.yaml `search`: \['simulatons'\]",
        ),
        (lambda: split_params({}, "mcst"), "unknown search strategy 'mcst'"),
        (lambda: split_params({"reward": "margn"}, "mcts"), "unknown search.reward 'margn'"),
        (lambda: split_params({"backend": "rey"}, "mcts"), "unknown search.backend 'rey'"),
        (lambda: TrainConfig.from_params({"epoch": 5, "routers": {}}), r"`train`: \['epoch'\]"),
        (lambda: TrainConfig.from_params({"val_fraction": 0}), r"train.val_fraction must lie in \(0, 1\)"),
        (lambda: TrainConfig.from_params({"batch_size": 0}), "train.batch_size must be at least 1"),
        (
            lambda: check_knob(2, "evaluate.knob_sweep"),
            r"evaluate.knob_sweep must be a number in \[-1, 1\], got 2",
        ),
        (lambda: check_knob("high", "--knob"), "--knob must be a number in .*got 'high'"),
    ],
)
def test_a_bad_value_is_named(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_valid_sections_build():
    config, reward, runner, stage, rule = split_params(
        {
            "simulations": 5,
            "reward": "margin",
            "max_examples": 9,
            "backend": "ray",
            "label_rule": "consensus",
        },
        "mcts",
    )
    assert (config.simulations, reward, stage) == (5, RewardConfig("margin"), {"max_examples": 9})
    assert (runner.backend, rule.label_rule) == ("ray", "consensus")
    assert TrainConfig.from_params({"epochs": 3, "routers": {"mcts": {}}}).epochs == 3
    assert TrainConfig.from_params({"lr": "1e-4"}).lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(ConfigError, match="`train.lr` must be a number, got 'fast'"):
        TrainConfig.from_params({"lr": "fast"})


def _evaluate(tmp_path, **evaluate):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "routers" / "mcts")
    point = {"routers_hash": routers_hash(tmp_path / "routers" / "mcts"), "knob": 0.1, "max_skip_run": 2}
    io.write_json(tmp_path / "knob.json", point)
    settings = {"knob_sweep": [0.0], "other_routers": [], "speed_prompts": 4, **evaluate}
    io.write_json(tmp_path / "params.json", {"search": {"max_skip_run": 2}, "evaluate": settings})
    return _run_evaluate(tmp_path)


def _run_evaluate(tmp_path):
    """The evaluate stage on the params, routers and knob.json that _evaluate wrote."""
    params, routers, knob = tmp_path / "params.json", tmp_path / "routers", tmp_path / "knob.json"
    return run_stage("evaluate", "--params", params, "--routers", routers, "--knob", knob)


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"knob_sweep": [0.0, 1.5]}, r"evaluate.knob_sweep must be a number in \[-1, 1\], got 1.5"),
        (
            {"other_routers": ["chian"]},
            r"does not hold: \['chian'\]; each must be a router set of train.routers",
        ),
        ({"speed_prompts": 0}, "evaluate.speed_prompts must be at least 1, got 0"),
    ],
)
def test_the_evaluate_stage_refuses_bad_settings_before_it_loads_a_model(tmp_path, evaluate, message):
    done = _evaluate(tmp_path, **evaluate)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert re.search(f"error: .*{message}", done.stderr), done.stderr


def test_the_evaluate_stage_refuses_a_knob_calibrated_under_another_skip_run_limit(tmp_path):
    done = _evaluate(tmp_path)
    assert "has no `model` section" in done.stderr  # the checks passed: it went on to load the model
    io.write_json(tmp_path / "knob.json", {**io.read_json(tmp_path / "knob.json"), "max_skip_run": 3})
    done = _run_evaluate(tmp_path)
    assert (
        done.returncode == 1
        and "calibrated with search.max_skip_run 3, params.yaml now says 2" in done.stderr
    )


def test_ray_workers_the_cluster_cannot_place_are_refused_instead_of_waiting_forever():
    from drllm_core.distributed import check_capacity

    check_capacity(workers=2, threads=1, gpus=0, cpus=2)
    check_capacity(workers=4, threads=1, gpus=4, cpus=8)
    with pytest.raises(ConfigError, match="4 Ray workers of one GPU each, the cluster has 2 GPUs"):
        check_capacity(workers=4, threads=1, gpus=2, cpus=8)
    with pytest.raises(ConfigError, match=r"3 Ray workers x 2 threads .* need 6 CPUs, the cluster has 4"):
        check_capacity(workers=3, threads=2, gpus=0, cpus=4)
