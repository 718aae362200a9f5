"""MLflow tracking for the pipeline: where the store is, and one run per stage execution.

The store is `MLFLOW_TRACKING_URI` when set, else a sqlite file `mlflow.db` at the repository root, resolved
to an absolute path, so that `dvc exp run --temp` (which runs in a copy under .dvc/tmp/exps/) logs to the
same store as the workspace. Runs of one pipeline state share the tag `drllm.pipeline` (a hash of
params.yaml and the code version) so the UI can group them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from drllm_core.paths import PAPER_CONSTRAINTS

EXPERIMENT = "drllm"


def repository_root(start: Path | None = None) -> Path:
    """The project root: the folder above `.dvc/tmp/exps/...` in a temporary experiment, else the nearest
    folder holding dvc.yaml, else the current folder."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


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


def configure():
    """Point MLflow at the store and the experiment; returns the mlflow module."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


@contextmanager
def stage_run(stage: str, params: dict | None = None, tags: dict | None = None, name: str | None = None):
    """An MLflow run for one stage execution, tagged with the stage and the pipeline state."""
    mlflow = configure()
    run_tags = {"drllm.stage": stage, "drllm.pipeline": pipeline_tag(), **(tags or {})}
    with mlflow.start_run(run_name=name or stage, tags=run_tags) as run:
        if params:
            mlflow.log_params(_flat(params))
        yield run


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
ROUTERS_HASH_TAG = "drllm.routers_hash"
KNOB_TAG = "drllm.knob"  # the routing knob a version serves at (its model config's default)


@dataclass(frozen=True)
class Serving:
    """How a registered version routes and prompts unless a prediction says otherwise: the operating point
    `evaluate` measured (knob, skip-run limit) and the default prompt format (`tasks.defaults.chat_template`).
    In the pipeline the routers' hash fixes the skip-run limit and the prompt format (they shape its labels
    and features), so a version is keyed by the routers' hash and the knob only."""

    knob: float = 0.0
    max_skip_run: int | None = PAPER_CONSTRAINTS.max_skip_run
    chat_template: bool = False


def registered_model_name(base_model_name: str) -> str:
    return f"drllm-{base_model_name}"


def find_version(name: str, routers_hash: str, knob: float | None = None):
    """The registered version holding this router set (served at `knob`, when given), or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matches = [
        v
        for v in versions
        if v.tags.get(ROUTERS_HASH_TAG) == routers_hash
        and (knob is None or float(v.tags.get(KNOB_TAG, 0.0)) == knob)  # untagged versions serve at 0
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def register_routers(
    folder: str,
    name: str,
    routers_hash: str,
    model_params: dict,
    serving: Serving = Serving(),
    alias: str = "candidate",
    tags: dict | None = None,
):
    """Log the router set as a pyfunc serving as `serving` says and register it as a version of `name` with
    `alias`; a router set already registered at that knob (same content hash) is not registered again. Returns
    (version, newly_registered)."""
    mlflow = configure()
    from mlflow import MlflowClient

    client = MlflowClient()
    existing = find_version(name, routers_hash, serving.knob)
    if existing is None:
        model_file = Path(__file__).with_name("mlflow_model.py")
        with mlflow.start_run(run_name=f"register-{name}", tags={"drllm.stage": "register", **(tags or {})}):
            info = mlflow.pyfunc.log_model(
                name="routed_llm",
                python_model=str(model_file),
                artifacts={"routers": str(folder)},
                model_config={"model": model_params, **asdict(serving)},
                code_paths=[str(model_file.parent)],
                signature=_signature(serving),
                pip_requirements=_requirements(),
                registered_model_name=name,
            )
        version = client.get_model_version(name, info.registered_model_version)
        client.set_model_version_tag(name, version.version, ROUTERS_HASH_TAG, routers_hash)
        client.set_model_version_tag(name, version.version, KNOB_TAG, str(serving.knob))
        version, newly = client.get_model_version(name, version.version), True  # with its tags
    else:
        version, newly = existing, False
    client.set_registered_model_alias(name, alias, version.version)
    return version, newly


def _signature(serving: Serving):
    """Prompts in; text, path and blocks out; generation options as inference-time params. MLflow fills in a
    param's default when a prediction leaves it out, so the defaults must be the version's own."""
    import pandas as pd
    from mlflow.models import infer_signature

    return infer_signature(
        pd.DataFrame({"prompt": ["a question"]}),
        pd.DataFrame(
            {"text": ["an answer"], "path": [[1.0, 0.0, 2.0]], "blocks": [3.0]}
        ),  # floats: no int-NaN warning
        params={"max_new_tokens": 64, "knob": float(serving.knob), "chat_template": serving.chat_template},
    )


def _requirements() -> list[str]:
    """The pinned direct dependencies the pyfunc needs (no slow inference by loading the model)."""
    from importlib.metadata import version

    return [
        f"{package}=={version(package).split('+')[0]}"
        for package in ("torch", "transformers", "safetensors", "gguf", "pandas", "mlflow")
    ]
