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
from pathlib import Path

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
