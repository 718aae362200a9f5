"""MLflow tracking for the pipeline: where the store is, one run per stage execution, and the model registry.

The store is `MLFLOW_TRACKING_URI` when set, else a sqlite file `mlflow.db` at the repository root, resolved
to an absolute path, so that `dvc exp run --temp` (which runs in a copy under .dvc/tmp/exps/) logs to the
same store as the workspace. Runs of one pipeline state share the tag `drllm.pipeline` (a hash of
params.yaml and the code version) so the UI can group them. Tracking is part of the product: a stage that
logs checks the store before it starts working and stops with an error when it cannot reach it.

A registered version is a router folder (weights, base model and how it routes: drllm_core.routing.Routing),
so the folder's content hash is the version's identity: the same folder is registered once, whatever runs
register it at once; anything that changes what a version serves changes the hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from drllm_core.errors import DrllmError
from drllm_core.io import repository_root

EXPERIMENT = "drllm"
ROUTERS_HASH_TAG = "drllm.routers_hash"
SERVING_TAG = "drllm.serving"  # the base model settings a version loads with (serving_key)
KNOB_TAG = "drllm.knob"  # the knob a version serves at by default (its routers' calibrated knob)


class TrackingError(DrllmError):
    pass


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


def _lock(purpose: str) -> FileLock:
    """A lock shared by every process on this machine that uses the same store: beside a sqlite file, else
    in the temporary folder, named by the store's URI."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return FileLock(f"{uri.removeprefix('sqlite:///')}.{purpose}.lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return FileLock(Path(tempfile.gettempdir()) / f"drllm-mlflow-{digest}.{purpose}.lock")


def configure():
    """Point MLflow at the store and the experiment, creating both once (serialised: concurrent first runs
    on a fresh sqlite store would race to create its schema); returns the mlflow module. An unreachable
    store is a TrackingError naming it."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # fail in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with _lock("create"):
            mlflow.set_experiment(EXPERIMENT)
    except (MlflowException, OSError) as err:
        raise TrackingError(
            f"cannot reach the MLflow store {uri} ({type(err).__name__}: {str(err)[:300]}). Every stage logs "
            "there and register writes the registry: start the server, fix MLFLOW_TRACKING_URI, or unset it to "
            "use mlflow.db at the repository root"
        ) from None
    return mlflow


def pipeline_tag(params_path: str = "params.yaml") -> str:
    digest = hashlib.sha256(Path(params_path).read_bytes() if Path(params_path).is_file() else b"")
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        head = ""
    digest.update(head.strip().encode())
    return digest.hexdigest()[:12]


@contextmanager
def stage_run(stage: str, params: dict | None = None, tags: dict | None = None, name: str | None = None):
    """An MLflow run for one stage execution, tagged with the stage and the pipeline state."""
    mlflow = configure()
    run_tags = {"drllm.stage": stage, "drllm.pipeline": pipeline_tag(), **(tags or {})}
    with mlflow.start_run(run_name=name or stage, tags=run_tags) as run:
        if params:
            mlflow.log_params(_flat(params))
        yield run


def log_stage(
    stage: str,
    params: dict,
    metrics: dict,
    tags: dict | None = None,
    name: str | None = None,
    history: list[dict] | None = None,
    artifacts: dict[str, dict] | None = None,
) -> None:
    """One run: the numeric `metrics` (others are skipped), per-step `history` rows (their `epoch` or list
    position is the step) and JSON `artifacts`."""
    with stage_run(stage, params, tags, name):
        import mlflow

        mlflow.log_metrics(numeric(metrics))
        for step, row in enumerate(history or []):
            values = {k: v for k, v in row.items() if k != "epoch"}
            mlflow.log_metrics(numeric(values), step=int(row.get("epoch", step)))
        for file, payload in (artifacts or {}).items():
            mlflow.log_dict(payload, file)


def latest_runs(ui: str) -> list[tuple[str, str]]:
    """(run name, link in the MLflow UI at `ui`) of the newest run of every stage execution name."""
    mlflow = configure()
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], order_by=["attributes.start_time DESC"])
    if runs.empty:
        return []
    latest = runs.drop_duplicates("tags.mlflow.runName")
    return [
        (
            f"{row['tags.mlflow.runName']} ({row['run_id'][:8]})",
            f"{ui}/#/experiments/{row['experiment_id']}/runs/{row['run_id']}",
        )
        for _, row in latest.sort_values("tags.mlflow.runName").iterrows()
    ]


def numeric(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, str)}


def _flat(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


# ---- model registry ---------------------------------------------------------------------------------------
def registered_model_name(base_model_name: str) -> str:
    """One registered model per base model: router sets of different models never share versions."""
    return f"drllm-{base_model_name}"


def serving_key(model_params: dict) -> str:
    """What of params.yaml's `model` section changes what a version serves (the base model, its revision and
    precision; not where its converted copy is cached, nor the device), as a short hash."""
    served = {k: model_params.get(k) for k in ("spec", "revision", "dtype", "trust_remote_code")}
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:12]


def find_version(name: str, routers_hash: str, model_params: dict | None = None):
    """The registered version holding this router folder (served with these `model` params, when given),
    or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    serving = None if model_params is None else serving_key(model_params)
    matches = [
        v
        for v in versions
        if v.tags.get(ROUTERS_HASH_TAG) == routers_hash and serving in (None, v.tags.get(SERVING_TAG))
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def version_by_alias(name: str, alias: str):
    """The version of `name` holding `alias`, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote_version(name: str, version: str, alias: str, tags: dict[str, str]) -> None:
    """Tag a version (its evaluation figures, which the next promotion compares with) and move `alias` to it."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)


def register_routers(
    folder: str,
    name: str,
    routers_hash: str,
    model_params: dict,
    knob: float,
    chat_template: bool,
    alias: str = "candidate",
):
    """Log the router folder as a pyfunc and register it as a version of `name` with `alias`; a folder with
    the same content hash, served with the same `model_params` (serving_key), is registered once, also when
    several processes register it at once. `knob` and `chat_template` are the folder's routing (the served
    defaults). Returns (version, newly_registered)."""
    mlflow = configure()
    from mlflow import MlflowClient

    client = MlflowClient()
    with _lock(f"register-{name}"):
        existing = find_version(name, routers_hash, model_params)
        if existing is None:
            model_file = Path(__file__).with_name("mlflow_model.py")
            with mlflow.start_run(
                run_name=f"register-{name}", tags={"drllm.stage": "register", ROUTERS_HASH_TAG: routers_hash}
            ):
                info = mlflow.pyfunc.log_model(
                    name="routed_llm",
                    python_model=str(model_file),
                    artifacts={"routers": str(folder)},
                    model_config={"model": model_params, "routers_hash": routers_hash},
                    code_paths=[str(model_file.parent)],
                    signature=_signature(knob, chat_template),
                    pip_requirements=_requirements(),
                    registered_model_name=name,
                )
            version = info.registered_model_version
            client.set_model_version_tag(name, version, ROUTERS_HASH_TAG, routers_hash)
            client.set_model_version_tag(name, version, KNOB_TAG, str(knob))
            client.set_model_version_tag(name, version, SERVING_TAG, serving_key(model_params))
            found, newly = client.get_model_version(name, version), True  # with its tags
        else:
            found, newly = existing, False
        client.set_registered_model_alias(name, alias, found.version)
    return found, newly


def load_served(name: str, alias: str = "champion"):
    """The version of `name` holding `alias`, loaded as a pyfunc after its routers are checked against the
    registry's record of them (the version's routers-hash tag): the artifact store cannot vouch for itself.
    Loading runs the version's logged code (models from code): load only from stores you trust."""
    import mlflow

    from drllm_core.routing import routers_hash

    configure()
    version = version_by_alias(name, alias)
    if version is None:
        raise TrackingError(f"{name} has no version with the alias {alias!r} in {tracking_uri()}")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}"))
    found, registered = routers_hash(local / "artifacts" / "routers"), version.tags.get(ROUTERS_HASH_TAG)
    if found != registered:
        raise TrackingError(
            f"{name} version {version.version}: its routers hash to {found}, but the registry recorded "
            f"{registered}: they were changed after registration; register them again"
        )
    return mlflow.pyfunc.load_model(str(local))


def _signature(knob: float, chat_template: bool):
    """Prompts (and optional choices) in; text, choice, scores, path and blocks out; generation options as
    inference-time params. MLflow fills in a param's default when a prediction leaves it out, so the
    defaults must be the version's own."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [ColSpec(DataType.string, "prompt"), ColSpec(Array(DataType.string), "choices", required=False)]
    )
    outputs = Schema(
        [
            ColSpec(DataType.string, "text"),
            ColSpec(DataType.long, "choice"),
            ColSpec(Array(DataType.double), "scores"),
            ColSpec(Array(DataType.long), "path"),
            ColSpec(DataType.long, "blocks"),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("max_new_tokens", DataType.long, 64),
            ParamSpec("knob", DataType.double, float(knob)),
            ParamSpec("chat_template", DataType.boolean, chat_template),
            ParamSpec("batch_size", DataType.long, 0),  # prompts per generation batch; 0: all in one
            ParamSpec("group_by_path", DataType.boolean, False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _requirements() -> list[str]:
    """The pinned direct dependencies the pyfunc needs (no slow inference by loading the model)."""
    from importlib.metadata import version

    return [
        f"{package}=={version(package).split('+')[0]}"
        for package in ("torch", "transformers", "safetensors", "gguf", "pandas", "mlflow")
    ]
