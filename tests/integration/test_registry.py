"""MLflow: a real `mlflow server` on localhost, driven over HTTP: registration keyed by the routers' hash,
aliases, the pyfunc answering token-identically to drllm_core's routed generation, and promotion gates."""

import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from drllm_core import io, tracking
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.routers import RouterConfig, RouterSet, routers_hash
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
    first, new = tracking.register_routers(folder, "drllm-tiny", digest, model_params)
    again, new_again = tracking.register_routers(folder, "drllm-tiny", digest, model_params)
    assert new and not new_again and first.version == again.version
    import mlflow

    assert mlflow.get_tracking_uri() == server
    model = mlflow.pyfunc.load_model("models:/drllm-tiny@candidate")
    prompts = ["Hello there", "What is the capital of a country?"]
    served = model.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 6})
    local = RoutedModel.from_folder(loaded, folder).generate(prompts, max_new_tokens=6)
    assert list(served["text"]) == [a.text for a in local]
    assert [list(p) for p in served["path"]] == [list(a.path) for a in local]
    # the same routers at another knob are another version, which serves at that knob by default
    serving = tracking.Serving(knob=-0.6, max_skip_run=1)
    skipping, new = tracking.register_routers(folder, "drllm-tiny", digest, model_params, serving)
    assert new and skipping.version != first.version and skipping.tags["drllm.knob"] == "-0.6"
    assert tracking.find_version("drllm-tiny", digest, -0.6).version == skipping.version
    served = mlflow.pyfunc.load_model(f"models:/drllm-tiny/{skipping.version}").predict(
        pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 6}
    )
    local = RoutedModel.from_folder(loaded, folder, knob=-0.6, max_skip_run=1).generate(
        prompts, max_new_tokens=6
    )
    assert [list(p) for p in served["path"]] == [list(a.path) for a in local]
    assert sum(map(sum, served["path"])) < 2 * 6  # knob -0.6 skips: the served paths are not the default


def _promote(root, metrics, gates):
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"promote": gates}))
    io.write_json(root / "eval.json", metrics)
    return run_stage(
        "promote", "--params", params, "--routers", root / "routers", "--metrics", root / "eval.json"
    )


def test_promotion_gates(server, routers):
    root, model_params, _ = routers
    digest = routers_hash(root / "routers")
    tracking.register_routers(str(root / "routers"), "drllm-tiny", digest, model_params)
    gates = {"min_id_accuracy_delta": -0.02, "max_ood_drop": 0.03, "min_blocks_saved": 1.0}

    def metrics(id_accuracy, blocks):
        return {
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

    refused = _promote(root, metrics(0.40, 4.5), gates)
    assert refused.returncode == 1 and "in-domain accuracy -10.00 points" in refused.stderr
    promoted = _promote(root, metrics(0.51, 4.5), gates)
    assert promoted.returncode == 0, promoted.stderr
    assert "candidate version" in promoted.stdout
    from mlflow import MlflowClient

    champion = MlflowClient().get_model_version_by_alias("drllm-tiny", "champion")
    assert champion.tags["drllm.blocks_saved"] == "1.5000"
    stale = _promote(root, {**metrics(0.51, 4.5), "routers_hash": "other"}, gates)
    assert stale.returncode == 1 and "evaluated other routers" in stale.stderr
    unregistered_knob = _promote(root, {**metrics(0.51, 4.5), "knob": 0.3}, gates)
    assert unregistered_knob.returncode == 1 and "at knob +0.3 are not registered" in unregistered_knob.stderr
    assert json.loads((root / "routers" / "config.json").read_text())["base_model_name"] == "tiny"
