"""MLflow: a real `mlflow server` on localhost, driven over HTTP: registration keyed by the routers' hash,
aliases, the pyfunc answering token-identically to drllm_core's routed generation, and promotion gates."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from drllm_core import io, tracking
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, routers_hash
from tests.conftest import run_stage, tiny_loaded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'store.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        del os.environ["MLFLOW_TRACKING_URI"]
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def routers(tmp_path_factory):
    root = tmp_path_factory.mktemp("routers")
    tiny = tiny_loaded()
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    model_params = {"spec": str(root / "model"), "dtype": "float32"}
    loaded = load_model(ModelSpec.from_params(model_params))
    config = RouterConfig(
        6,
        64,
        16,
        4,
        base_model=model_params["spec"],
        base_model_name="tiny",
        base_fingerprint=weights_fingerprint(loaded.model),
    )
    RouterSet(config).save(root / "routers")
    return root, model_params, loaded


def test_registration_over_http_is_keyed_by_hash_and_the_pyfunc_matches_routed_generation(server, routers):
    root, model_params, loaded = routers
    folder = str(root / "routers")
    digest = routers_hash(folder)
    first, new = tracking.register_routers(folder, "drllm-tiny", digest, model_params, 0.0, False)
    again, new_again = tracking.register_routers(folder, "drllm-tiny", digest, model_params, 0.0, False)
    assert new and not new_again and first.version == again.version
    import mlflow

    assert mlflow.get_tracking_uri() == server
    model = mlflow.pyfunc.load_model("models:/drllm-tiny@candidate")
    prompts = ["Hello there", "What is the capital of a country?"]
    served = model.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 6})
    local = RoutedModel.from_folder(loaded, folder).generate(prompts, max_new_tokens=6)
    assert list(served["text"]) == [a.text for a in local]
    assert [list(p) for p in served["path"]] == [list(a.path) for a in local]
    assert {"batch_size", "group_by_path"} <= {p.name for p in model.metadata.get_params_schema().params}
    batching = {"max_new_tokens": 6, "batch_size": 1, "group_by_path": True}  # same answers, other batches
    assert model.predict(pd.DataFrame({"prompt": prompts}), params=batching).equals(served)
    # the same routers calibrated to another knob are another folder, so another version serving at that knob
    RouterSet.load(folder).with_knob(-0.6).save(root / "calibrated")
    calibrated = str(root / "calibrated")
    skipping, new = tracking.register_routers(
        calibrated, "drllm-tiny", routers_hash(calibrated), model_params, -0.6, False
    )
    assert new and skipping.version != first.version and skipping.tags["drllm.knob"] == "-0.6"
    assert tracking.find_version("drllm-tiny", routers_hash(calibrated)).version == skipping.version
    served = mlflow.pyfunc.load_model(f"models:/drllm-tiny/{skipping.version}").predict(
        pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 6}
    )
    local = RoutedModel.from_folder(loaded, calibrated).generate(prompts, max_new_tokens=6)
    assert [list(p) for p in served["path"]] == [list(a.path) for a in local]
    assert sum(map(sum, served["path"])) < 2 * 6  # knob -0.6 skips: the served paths are not the default


_REGISTER = """
import sys
from drllm_core import tracking
from drllm_core.routing import routers_hash
folder, params = sys.argv[1], {"spec": sys.argv[2], "dtype": "float32"}
version, new = tracking.register_routers(folder, "drllm-race", routers_hash(folder), params, 0.0, False)
print(version.version)
"""


def test_concurrent_first_runs_on_a_fresh_store_all_land_and_register_once(tmp_path, routers):
    root, model_params, _ = routers
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}"}
    log_run = "from drllm_core import tracking\ntracking.log_stage('race', {}, {'x': 1.0})"
    starters = [
        subprocess.Popen([sys.executable, "-c", log_run], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    assert [p.wait() for p in starters] == [0, 0, 0], [p.stderr.read() for p in starters]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert len(client.search_runs([experiment.experiment_id])) == 3
    command = [sys.executable, "-c", _REGISTER, str(root / "routers"), model_params["spec"]]
    racers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate() for p in racers]
    assert [p.returncode for p in racers] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {"1"}
    assert len(client.search_model_versions("name = 'drllm-race'")) == 1


def _promote(root, metrics, gates, model_params):
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"promote": gates, "model": model_params}))
    io.write_json(root / "eval.json", metrics)
    return run_stage(
        "promote", "--params", params, "--routers", root / "routers", "--metrics", root / "eval.json"
    )


def test_promotion_gates(server, routers):
    root, model_params, _ = routers
    digest = routers_hash(root / "routers")
    tracking.register_routers(str(root / "routers"), "drllm-tiny", digest, model_params, 0.0, False)
    gates = {
        "min_id_accuracy_delta": -0.02,
        "max_ood_drop": 0.03,
        "min_blocks_saved": 1.0,
        "min_generation_identical": 0.2,
    }

    def metrics(id_accuracy, blocks, identical=0.5):
        return {
            "generation": {"open": {"identical_share": identical}},
            "num_layers": 6,
            "routers_hash": digest,
            "knob": 0.0,
            "configs": {
                "drllm/eval_id": {"accuracy": id_accuracy, "blocks_per_token": blocks},
                "vanilla/eval_id": {"accuracy": 0.5, "blocks_per_token": 6},
                "drllm/eval_ood": {"accuracy": 0.4, "blocks_per_token": blocks},
                "vanilla/eval_ood": {"accuracy": 0.41, "blocks_per_token": 6},
            },
        }

    refused = _promote(root, metrics(0.40, 4.5), gates, model_params)
    assert refused.returncode == 1 and "in-domain accuracy -10.00 points" in refused.stderr
    diverging = _promote(root, metrics(0.51, 4.5, identical=0.1), gates, model_params)
    assert diverging.returncode == 1 and "10.0% of open answers generated as vanilla's" in diverging.stderr
    promoted = _promote(root, metrics(0.51, 4.5), gates, model_params)
    assert promoted.returncode == 0, promoted.stderr
    assert "candidate version" in promoted.stdout
    from mlflow import MlflowClient

    champion = MlflowClient().get_model_version_by_alias("drllm-tiny", "champion")
    assert champion.tags["drllm.blocks_saved"] == "1.5000"
    stale = _promote(root, {**metrics(0.51, 4.5), "routers_hash": "other"}, gates, model_params)
    assert stale.returncode == 1 and "evaluated other routers" in stale.stderr
    RouterSet.load(root / "routers").with_knob(0.3).save(root / "unregistered")
    io.write_json(
        root / "eval.json", {**metrics(0.51, 4.5), "routers_hash": routers_hash(root / "unregistered")}
    )
    unregistered = run_stage(
        "promote",
        "--params",
        root / "params.yaml",
        "--routers",
        root / "unregistered",
        "--metrics",
        root / "eval.json",
    )
    assert unregistered.returncode == 1 and "are not registered in drllm-tiny" in unregistered.stderr
    assert json.loads((root / "routers" / "config.json").read_text())["base_model_name"] == "tiny"


def test_a_version_whose_routers_were_changed_after_registration_is_refused(server, routers, tmp_path):
    root, model_params, _ = routers
    folder = str(root / "routers")
    version, _ = tracking.register_routers(
        folder, "drllm-tiny", routers_hash(folder), model_params, 0.0, False
    )
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        f"models:/drllm-tiny/{version.version}", dst_path=str(tmp_path)
    )
    config = next(Path(local).rglob("routers/config.json"))
    config.write_text(config.read_text().replace('"windows": 4', '"windows": 3'))
    with pytest.raises(Exception, match="hash to .*, not to .* as registered"):
        mlflow.pyfunc.load_model(local)
    # loading through the registry checks the routers against the registry's own record of them
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias("drllm-tiny", "tampered", version.version)
    assert (
        tracking.load_served("drllm-tiny", "tampered").predict(pd.DataFrame({"prompt": ["Hi"]})) is not None
    )
    client.set_model_version_tag("drllm-tiny", version.version, tracking.ROUTERS_HASH_TAG, "0" * 16)
    with pytest.raises(tracking.TrackingError, match="but the registry recorded 0000000000000000"):
        tracking.load_served("drllm-tiny", "tampered")
    client.set_model_version_tag(
        "drllm-tiny", version.version, tracking.ROUTERS_HASH_TAG, routers_hash(folder)
    )


def test_a_version_is_keyed_by_everything_that_changes_what_it_serves(server, routers):
    root, model_params, _ = routers
    folder = str(root / "routers")
    digest = routers_hash(folder)
    base, _ = tracking.register_routers(folder, "drllm-keys", digest, model_params, 0.0, False)
    bf16 = {**model_params, "dtype": "bfloat16"}  # the same routers on the base model in another precision
    other, new = tracking.register_routers(folder, "drllm-keys", digest, bf16, 0.0, False)
    assert new and other.version != base.version
    assert tracking.find_version("drllm-keys", digest, bf16).version == other.version
    moved = {**model_params, "cache_dir": "/elsewhere", "device": "cpu"}  # where, not what: the same version
    assert (
        tracking.register_routers(folder, "drllm-keys", digest, moved, 0.0, False)[0].version == base.version
    )
    trained = RouterSet.load(folder)
    limits = dataclasses.replace(trained.config.routing, max_skip_run=1)
    prompts = dataclasses.replace(trained.config.routing, tasks={"defaults": {"chat_template": True}})
    for name, routing in (("limit", limits), ("format", prompts)):  # another skip-run limit, prompt format
        changed = RouterSet(dataclasses.replace(trained.config, routing=routing))
        changed.load_state_dict(trained.state_dict())
        changed.save(root / name)
        digest = routers_hash(root / name)
        version, new = tracking.register_routers(
            str(root / name), "drllm-keys", digest, model_params, 0.0, False
        )
        assert new and version.version not in (base.version, other.version), name
