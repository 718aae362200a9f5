"""How a router set routes, without torch: the router folder's config.json (base model, shapes, provenance,
and `routing`: the path limits, the prompt format and the knob), its content hash, and the knob's rule.

A router folder is the serving contract: RoutedModel, the drllm CLI, the registered MLflow model and the
evaluate stage all route as its config says.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drllm_core.errors import ConfigError, DrllmError
from drllm_core.paths import CLASS_NAMES, EXECUTE, PAPER_CONSTRAINTS, REPEAT, SKIP, PathConstraints, PathError
from drllm_core.tasks.prompts import TaskSettings, default_settings

NUM_CLASSES = len(CLASS_NAMES)  # skip, execute, repeat


class RouterMismatch(DrllmError):
    pass


@dataclass(frozen=True)
class Routing:
    """How a router set routes wherever it runs (RoutedModel, the drllm CLI, the registered model,
    evaluate): the path limits its labels were searched under, the prompt format its features were computed
    in (params.yaml's `tasks` section), and the knob the calibrate stage chose (None: not calibrated)."""

    max_skip_run: int | None = PAPER_CONSTRAINTS.max_skip_run
    max_blocks: int | None = PAPER_CONSTRAINTS.max_blocks
    tasks: dict = field(default_factory=dict)
    knob: float | None = None
    max_skips: int | None = None  # cost routers: skipped layers per input, at most (None: no limit)

    @property
    def constraints(self) -> PathConstraints:
        return PathConstraints(max_skip_run=self.max_skip_run, max_blocks=self.max_blocks)

    def prompt_settings(self) -> TaskSettings:
        """How a raw prompt is formatted for these routers: `tasks.defaults`."""
        return default_settings(self.tasks)


_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def router_set_names(names, where: str) -> list[str]:
    """Router set names (train.routers' keys), which become folder and file names: letters, digits, `_` and
    `-` only, so none escapes its folder (`../x`)."""
    bad = [name for name in names if not isinstance(name, str) or not _SET_NAME.fullmatch(name)]
    if bad:
        raise ConfigError(
            f"{where} must be router set names of letters, digits, _ and - (train.routers), got {bad}"
        )
    return list(names)


KINDS = ("classes", "costs")
DECISION_DEPTH = 0.1  # train.decision_depth: a cost router decides 10% of the way through the model


def decision_layer(depth: float, num_layers: int) -> int:
    """The layer a cost router decides at, `depth` of the way through the model (leaving layers after it)."""
    return min(num_layers - 2, round(depth * num_layers))


@dataclass
class RouterConfig:
    """What a router folder holds. `classes`: one MLP per layer picks skip, execute or repeat (the paper);
    the knob mixes its distribution (knob_decisions). `costs`: one router reads the state entering
    `decision_layer` and predicts, for each of `candidates`, the log KL divergence skipping that layer alone
    would cause the answer; the knob p in [-1, 1] sets the threshold at which a candidate is skipped
    (cost_decisions), so that its training questions skip (1 - p) / 2 * max_skips layers on average: p = -1
    skips the cheapest candidates wherever it may, p = 0 half of max_skips, p = 1 nothing."""

    num_layers: int
    hidden_size: int
    bottleneck: int = 128  # classes: width of the router MLP (paper: 128)
    windows: int = 8  # prompt windows pooled separately (paper: 8; more helps up to ~16)
    base_model: str = ""  # spec of the base model (as in params.yaml `model.spec`)
    base_model_name: str = ""
    base_fingerprint: str = ""  # drllm_core.models.weights_fingerprint of the base model
    base_sample: list[float] = field(default_factory=list)  # drllm_core.models.weights_sample of it
    provenance: dict = field(default_factory=dict)  # data manifest hash, search params, label statistics
    routing: Routing = field(default_factory=Routing)
    kind: str = "classes"
    decision_layer: int = 0  # costs: the router reads the hidden state entering this layer
    candidates: list[int] = field(default_factory=list)  # costs: the layers it may skip, all after it
    rank: int = 0  # costs: dimensions of the linear map (its PCA projection)

    @classmethod
    def from_json(cls, values: dict, where: str) -> RouterConfig:
        """The config.json of a router folder, checked: a wrong shape or value is refused with its name."""
        try:
            config = cls(**{**values, "routing": Routing(**values.get("routing", {}))})
        except TypeError as err:
            raise RouterMismatch(f"{where} is not a router config of this drllm version: {err}") from None
        for name in ("num_layers", "hidden_size", "bottleneck", "windows"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RouterMismatch(f"{where}: {name} must be a whole number of at least 1, got {value!r}")
        for name, least in (("max_skip_run", 0), ("max_blocks", 1), ("max_skips", 1)):
            value = getattr(config.routing, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise RouterMismatch(
                    f"{where}: routing.{name} must be a whole number of at least {least} or null, got {value!r}"
                )
        if config.kind not in KINDS:
            raise RouterMismatch(f"{where}: kind must be one of {KINDS}, got {config.kind!r}")
        if config.kind == "costs" and (
            not config.candidates
            or not all(config.decision_layer < c < config.num_layers for c in config.candidates)
            or not 0 <= config.decision_layer < config.num_layers
        ):
            raise RouterMismatch(
                f"{where}: a cost router's candidates {config.candidates} must be layers after its decision layer "
                f"{config.decision_layer}, below {config.num_layers}"
            )
        knob = config.routing.knob
        if knob is not None:
            try:
                check_knob(knob, f"{where}: routing.knob")
            except ConfigError as err:
                raise RouterMismatch(str(err)) from None
        try:
            config.routing.constraints.check_feasible(config.num_layers)
        except PathError as err:
            raise RouterMismatch(f"{where}: routing limits: {err}") from None
        return config


def read_router_config(folder: str | Path) -> RouterConfig:
    """The checked config.json of a router folder."""
    path = Path(folder) / "config.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RouterMismatch(f"cannot read router config {path}: {err}") from None
    if not isinstance(values, dict):
        raise RouterMismatch(f"{path} must hold a JSON object")
    return RouterConfig.from_json(values, str(path))


def routers_hash(folder: str | Path) -> str:
    """Content hash of a saved router set (weights and config): the registry's identity for it."""
    digest = hashlib.sha256()
    for name in ("routers.safetensors", "config.json"):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


_TIE_ORDER = (EXECUTE, SKIP, REPEAT)  # max() returns the first of equal maxima


def knob_decisions(logits: Sequence[Sequence[float]], knob: float) -> list[int]:
    """Counts from router logits (B rows of 3, as `logits.tolist()`) under the knob p in [-1, 1], our reading
    of the paper's appendix C: the router's distribution q is mixed towards all-skip for p < 0, towards
    all-execute for 0 < p <= 0.5 and from execute towards all-repeat above (docs/method.md). p = 0 is the
    router's own argmax. Ties go to execute (so p >= 0.25 never skips); a row with a NaN or infinite logit
    executes. Plain Python: a prefill decides a few rows per layer, where a tensor operation's fixed cost
    exceeds the arithmetic."""
    scale, offset = _knob_mixture(check_knob(knob, "the routing knob"))
    decisions = []
    for row in logits:
        if not all(map(math.isfinite, row)):
            decisions.append(EXECUTE)
            continue
        if knob != 0:  # p = 0 needs no softmax: the argmax of the logits is the argmax of q
            top = max(row)
            weights = [math.exp(value - top) for value in row]
            total = sum(weights)
            row = [scale * w / total + o for w, o in zip(weights, offset, strict=True)]
        decisions.append(max(_TIE_ORDER, key=row.__getitem__))
    return decisions


def check_knob(value, where: str) -> float:
    """`value` as a routing knob, or a ConfigError naming where it came from."""
    try:
        knob = float(value)
    except (TypeError, ValueError):
        knob = math.nan
    if not -1.0 <= knob <= 1.0:
        raise ConfigError(f"{where} must be a number in [-1, 1], got {value!r}")
    return knob


def cost_decisions(
    costs: Sequence[Sequence[float]], candidates: Sequence[int], threshold: float, max_skips: int | None
) -> list[list[int]]:
    """For each row's predicted log costs of skipping the candidate layers, the layers to skip: every
    candidate predicted at or below `threshold`, cheapest first, at most `max_skips` (None: all); a NaN
    prediction is never skipped."""
    plans = []
    for row in costs:
        cheap = sorted(
            (cost, layer) for cost, layer in zip(row, candidates, strict=True) if cost <= threshold
        )
        plans.append(sorted(layer for _, layer in cheap[:max_skips]))
    return plans


def _knob_mixture(knob: float) -> tuple[float, tuple[float, ...]]:
    """The knob's mixture as scale * q + offset (per class)."""
    offset = [0.0] * NUM_CLASSES
    if knob < 0:
        scale, offset[SKIP] = 1 + knob, -knob
    elif knob <= 0.5:
        scale, offset[EXECUTE] = 1 - 2 * knob, 2 * knob
    else:
        scale, offset[EXECUTE], offset[REPEAT] = 0.0, 2 - 2 * knob, 2 * knob - 1
    return scale, tuple(offset)
