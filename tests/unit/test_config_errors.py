"""Bad params.yaml values and typos: a ConfigError naming the key and what is allowed, before any model loads,
and from a stage `error: ...` with exit status 1 and no traceback."""

import re

import pytest
import torch
from safetensors.torch import save_file

from drllm_core import io
from drllm_core.calibration import CalibrateSettings
from drllm_core.errors import ConfigError
from drllm_core.paths import PathConstraints
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, check_knob
from drllm_core.runtime import Runtime
from drllm_core.search_runner import RewardConfig, SearchSettings
from drllm_core.training import TrainConfig
from tests.conftest import run_stage


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: SearchSettings.from_params({"simulatons": 5}, "mcts"),
            r"unknown keys in params.yaml `search`: \['simulatons'\]",
        ),
        (lambda: SearchSettings.from_params({}, "mcst"), "unknown search strategy 'mcst'"),
        (lambda: SearchSettings.from_params({"reward": "margn"}, "mcts"), "unknown search.reward 'margn'"),
        (
            lambda: SearchSettings.from_params({"max_skip_run": -1}, "mcts"),
            "search.max_skip_run must be at least 0",
        ),
        (
            lambda: SearchSettings.from_params({"max_examples": -1}, "mcts"),
            "search.max_examples must be at least 1",
        ),
        (
            lambda: SearchSettings.from_params({"max_examples": 0}, "mcts"),
            "search.max_examples must be at least 1",
        ),
        (
            lambda: SearchSettings.from_params({"early_stop": "no"}, "mcts"),
            "`search.early_stop` must be true or false, got 'no'",
        ),
        (
            lambda: SearchSettings.from_params({"margin": "abc"}, "mcts"),
            "`search.margin` must be a number, got 'abc'",
        ),
        (
            lambda: SearchSettings.from_params({"simulations": 2.5}, "mcts"),
            "`search.simulations` must be a whole number",
        ),
        (
            lambda: Runtime.from_params({"runtime": {"search_backend": "rey"}}),
            "unknown runtime.search_backend 'rey'",
        ),
        (
            lambda: Runtime.from_params({"runtime": {"batch_size": 0}}),
            "runtime.batch_size must be a whole number of at least 1",
        ),
        (lambda: Runtime.from_params({"runtime": {"threads": -1}}), "runtime.threads must be a whole number"),
        (lambda: Runtime.from_params({"runtime": {"workers": 0}}), "runtime.workers must be a whole number"),
        (lambda: Runtime.from_params({"runtime": {"speed_prompts": 0}}), "runtime.speed_prompts must be"),
        (lambda: SearchSettings.from_params({"margin": -1}, "mcts"), "search.margin must be at least 0"),
        (
            lambda: PathConstraints.from_params({"max_skip_run": "two"}),
            "`search.max_skip_run` must be a whole",
        ),
        (lambda: PathConstraints.from_params({"max_blocks": 0}), "search.max_blocks at least 1"),
        (
            lambda: TrainConfig.from_params({"routers": {"../x": {}}}),
            r"train.routers must be router set names",
        ),
        (
            lambda: CalibrateSettings.from_params({"routers": "../../x", "knob": 0}),
            "calibrate.routers must be",
        ),
        (lambda: TrainConfig.from_params({"epoch": 5, "routers": {}}), r"`train`: \['epoch'\]"),
        (lambda: TrainConfig.from_params({"val_fraction": 0}), r"train.val_fraction must lie in \(0, 1\)"),
        (lambda: TrainConfig.from_params({"batch_size": 0}), "train.batch_size must be at least 1"),
        (
            lambda: TrainConfig.from_params({"epochs": True}),
            "`train.epochs` must be a whole number, got True",
        ),
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


def test_valid_sections_build_and_numbers_may_be_strings():
    settings = SearchSettings.from_params(
        {
            "simulations": "5",
            "reward": "margin",
            "max_examples": 9,
            "label_rule": "consensus",
            "strategies": ["mcts"],
        },
        "mcts",
    )
    assert (settings.search.simulations, settings.reward, settings.max_examples) == (
        5,
        RewardConfig("margin"),
        9,
    )
    assert settings.rule.label_rule == "consensus"
    assert Runtime.from_params({"runtime": {"search_backend": "ray", "threads": "2"}}).threads == 2
    assert TrainConfig.from_params({"epochs": "3", "routers": {"mcts": {}}}).epochs == 3
    assert TrainConfig.from_params({"lr": "1e-4"}).lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(ConfigError, match="`train.lr` must be a number, got 'fast'"):
        TrainConfig.from_params({"lr": "fast"})


def _evaluate(tmp_path, **evaluate):
    config = RouterConfig(
        num_layers=2, hidden_size=4, bottleneck=3, provenance={"search": {"strategy": "singles"}}
    )
    RouterSet(config).with_knob(0.1).save(tmp_path / "drllm")
    settings = {"knob_sweep": [0.0], "other_routers": [], **evaluate}
    io.write_json(tmp_path / "params.json", {"search": {"max_skip_run": 2}, "evaluate": settings})
    params, routers = tmp_path / "params.json", tmp_path / "routers"
    prepared = tmp_path / "prepared"  # not there
    return run_stage(
        "evaluate",
        "--params",
        params,
        "--routers",
        routers,
        "--drllm",
        tmp_path / "drllm",
        "--prepared",
        prepared,
    )


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"knob_sweep": [0.0, 1.5]}, r"evaluate.knob_sweep must be a number in \[-1, 1\], got 1.5"),
        ({"other_routers": ["chian"]}, r"names 'chian', but .* holds no router set"),
        ({"other_routers": ["../../etc"]}, r"evaluate.other_routers must be router set names"),
        ({"generation_questions": -1}, "evaluate.generation_questions must be at least 1, got -1"),
        ({"knob_sweep": -1.0}, r"`evaluate.knob_sweep` must be a list, e.g. \[-1.0\]"),
        ({"static_budgets": 2}, r"`evaluate.static_budgets` must be a list"),
        ({"static_examples": "many"}, "`evaluate.static_examples` must be a whole number, got 'many'"),
    ],
)
def test_the_evaluate_stage_refuses_bad_settings_before_it_loads_a_model(tmp_path, evaluate, message):
    done = _evaluate(tmp_path, **evaluate)
    assert done.returncode == 1
    assert re.search(f"error: .*{message}", done.stderr), done.stderr


def test_the_evaluate_stage_goes_on_to_its_inputs_when_the_settings_are_good(tmp_path):
    done = _evaluate(tmp_path)
    assert done.returncode == 1
    assert (
        f"error: {tmp_path / 'prepared' / 'manifest.json'} not found: `dvc repro` runs the stages"
        in done.stderr
    )


def test_ray_workers_the_cluster_cannot_place_are_refused_instead_of_waiting_forever():
    from drllm_core.distributed import check_capacity

    check_capacity(workers=2, threads=1, gpus=0, cpus=2)
    check_capacity(workers=4, threads=1, gpus=4, cpus=8)
    with pytest.raises(ConfigError, match="4 Ray workers of one GPU each, the cluster has 2 GPUs"):
        check_capacity(workers=4, threads=1, gpus=2, cpus=8)
    with pytest.raises(ConfigError, match=r"3 Ray workers x 2 threads .* need 6 CPUs, the cluster has 4"):
        check_capacity(workers=3, threads=2, gpus=0, cpus=4)


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ({"knob": 3.0}, r"routing.knob must be a number in \[-1, 1\], got 3.0"),
        ({"max_skip_run": -5}, "routing.max_skip_run must be a whole number of at least 0 or null, got -5"),
        ({"max_skips": 0}, "routing.max_skips must be a whole number of at least 1"),
        ("truncated", r"cannot read .*routers.safetensors .* the file is missing or truncated"),
        ("nameless", "config.json names no base model"),
    ],
)
def test_register_refuses_a_router_folder_that_could_not_serve(tmp_path, routing, message):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3, base_model_name="m")).save(
        tmp_path / "drllm"
    )
    config = io.read_json(tmp_path / "drllm" / "config.json")
    weights = tmp_path / "drllm" / "routers.safetensors"
    if routing == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif routing == "nameless":
        io.write_json(tmp_path / "drllm" / "config.json", {**config, "base_model_name": ""})
    else:
        io.write_json(
            tmp_path / "drllm" / "config.json", {**config, "routing": {**config["routing"], **routing}}
        )
    io.write_json(tmp_path / "params.json", {"model": {"spec": "unused"}})
    done = run_stage(
        "register",
        "--params",
        tmp_path / "params.json",
        "--routers",
        tmp_path / "drllm",
        "--out",
        tmp_path / "r.json",
    )
    assert done.returncode == 1 and re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (None, "train.windows is 16 but the features .* were pooled into 8 windows"),
        ("truncate", r"cannot read the features in .* rerun `dvc repro features`"),
        ("no windows", r"the features in .* lack \['windows'\]: rerun `dvc repro features`"),
    ],
)
def test_train_refuses_features_it_cannot_use(tmp_path, damage, message):
    features = tmp_path / "features"
    features.mkdir()
    tensors = {
        "features": torch.zeros(2, 6, 8, 4),
        "window_mask": torch.ones(2, 8),
        "labels": torch.ones(2, 6),
    }
    save_file(tensors, features / "features.safetensors")
    meta = {"windows": 8, "model": "m", "fingerprint": "f", "weights_sample": [], "tasks": {}}
    io.write_json(
        features / "meta.json", {k: v for k, v in meta.items() if damage != "no windows" or k != "windows"}
    )
    if damage == "truncate":
        data = (features / "features.safetensors").read_bytes()
        (features / "features.safetensors").write_bytes(data[: len(data) // 2])
    io.write_json(
        tmp_path / "params.json", {"train": {"windows": 16, "routers": {"costs": {}}}, "search": {}}
    )
    done = run_stage(
        "train",
        *("--params", tmp_path / "params.json", "--features", features, "--paths", tmp_path),
        *("--out", tmp_path / "r", "--metrics", tmp_path / "m.json", "--plots", tmp_path / "plots"),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "r").exists()


def test_a_stage_whose_mlflow_store_cannot_be_reached_stops_before_it_works(tmp_path, monkeypatch):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "r")
    io.write_json(tmp_path / "params.json", {"search": {}, "calibrate": {"knob": 0.1}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # nothing listens there
    done = run_stage(
        "calibrate",
        *("--params", tmp_path / "params.json", "--routers", tmp_path / "r", "--out", tmp_path / "drllm"),
        *("--metrics", tmp_path / "calibration.json"),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot reach the MLflow store http://127.0.0.1:1" in done.stderr
    assert not (tmp_path / "drllm").exists() and not (tmp_path / "calibration.json").exists()


def test_the_search_stage_needs_a_strategy(tmp_path):
    io.write_json(tmp_path / "params.json", {"search": {"strategies": []}})
    done = run_stage("search", "--params", tmp_path / "params.json")
    assert done.returncode == 1 and "search.strategies is empty" in done.stderr
