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

# The headline figures of one evaluated configuration (per set, or per task), as the evaluate stage writes
# them to metrics/eval.json and the report reads them back: the contract between the two stages.
SCORE_COLUMNS = ("n", "accuracy", "ci_low", "ci_high", "blocks_per_token", "saved_pct")

log = logging.getLogger("drllm")


def parser(description: str) -> argparse.ArgumentParser:
    args = argparse.ArgumentParser(description=description)
    args.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    return args


def load_params(path: str) -> dict:
    if not os.path.isfile(path):
        raise DrllmError(f"parameters file {path} not found; run from the repository root or pass --params")
    return read_yaml(path)


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise DrllmError(f"params.yaml has no `{name}` section")
    return params[name] or {}


def run(main: Callable[[], None]) -> None:
    """Run a stage's main; a DrllmError becomes `error: <message>` on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from transformers.utils import logging as hf_logging

    for noisy in ("great_expectations", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        main()
    except DrllmError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
