"""What every stage script shares: reading params.yaml, logging, and turning known errors into a clear
message and a non-zero exit (no traceback for a user's mistake)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from drllm_core.errors import DrllmError
from drllm_core.io import read_yaml

log = logging.getLogger("drllm")
# Set before the libraries are imported (data-only stages never import transformers): no weight-loading
# progress bars or advisory warnings in the stage logs, and no token for a local Ray instance.
QUIET = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "RAY_AUTH_MODE": "disabled"}


def parser(description: str) -> argparse.ArgumentParser:
    args = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    args.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    return args


def load_params(path: str) -> dict:
    if not os.path.isfile(path):
        raise DrllmError(f"parameters file {path} not found; run from the repository root or pass --params")
    params = read_yaml(path)
    if not isinstance(params, dict):
        raise DrllmError(
            f"{path} must hold a mapping of sections (model, tasks, search, ...), not {type(params).__name__}"
        )
    return params


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise DrllmError(f"params.yaml has no `{name}` section")
    value = params[name] or {}
    if not isinstance(value, dict):
        raise DrllmError(f"params.yaml `{name}` must be a mapping of keys to values, got {value!r}")
    return value


def run(
    stage: Callable[[argparse.Namespace], None], args: argparse.ArgumentParser, argv: list[str] | None
) -> int:
    """Parse `argv` and run a stage; a DrllmError becomes `error: <message>` on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    for noisy in ("great_expectations", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parsed = args.parse_args(argv)
    try:
        stage(parsed)
    except DrllmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:  # a stage's inputs are files another stage writes
        print(f"error: {err.filename} not found: `dvc repro` runs the stages that write it", file=sys.stderr)
        return 1
    return 0
