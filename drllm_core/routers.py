"""Routers: one tiny MLP per decoder layer that picks skip (0), execute (1) or repeat (2) for an input.

Input: the hidden state entering the layer over the prompt tokens, split into windows and mean-pooled.
With T prompt tokens and `windows` = W, a prompt uses min(W, T) windows of T // min(W, T) tokens each, in
order; the T mod min(W, T) trailing tokens are left out (the paper's rule). A prompt shorter than W tokens
therefore has one window per token, and the router averages its logits over the windows a prompt has.

Saved as safetensors plus config.json (base model, weight fingerprint and sample, shapes, the data and search
they came from, label statistics); loading checks the base model so routers never run on a model they were not
trained for. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from drllm_core import io
from drllm_core.errors import ConfigError, DrllmError
from drllm_core.models import same_weights, weights_fingerprint, weights_sample
from drllm_core.paths import EXECUTE, REPEAT, SKIP

NUM_CLASSES = 3  # skip, execute, repeat


class RouterMismatch(DrllmError):
    pass


@dataclass
class RouterConfig:
    num_layers: int
    hidden_size: int
    bottleneck: int = 128  # width of the router MLP (paper: 128)
    windows: int = 8  # prompt windows pooled separately (paper: 8; more helps up to ~16)
    base_model: str = ""  # spec of the base model (as in params.yaml `model.spec`)
    base_model_name: str = ""
    base_fingerprint: str = ""  # drllm_core.models.weights_fingerprint of the base model
    base_sample: list[float] = field(default_factory=list)  # drllm_core.models.weights_sample of it
    provenance: dict = field(default_factory=dict)  # data manifest hash, search params, label statistics


class Router(nn.Module):
    """Linear(d, bottleneck) -> GELU(tanh) -> Linear(bottleneck, 3) on each window; logits averaged."""

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.up = nn.Linear(hidden_size, bottleneck)
        self.act = nn.GELU(approximate="tanh")
        self.out = nn.Linear(bottleneck, NUM_CLASSES)
        for linear in (self.up, self.out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)  # the paper: zero bias beat a class-frequency bias

    def forward(self, windows: Tensor, window_mask: Tensor) -> Tensor:
        """windows (B, W, D), window_mask (B, W) -> logits (B, 3) averaged over each row's windows."""
        return window_mean(self.out(self.act(self.up(windows))), window_mask)


@dataclass(frozen=True)
class FoldedRouter:
    """One layer's router for routing: the same function as Router on standardised windows, with the
    standardisation's scale folded into the first Linear's weight and the window average taken before the last
    Linear (both are linear). Five tensor operations: a router runs once per layer in the prefill, where its
    fixed per-operation cost, not its arithmetic, is what a small model notices. The mean is subtracted, not
    folded into the bias: with massive activations (a mean far above its spread) the folded bias cancels in
    float32 and moves logits by ~1e-4, enough to flip a near tie. Rows need at least one window."""

    mean: Tensor  # (D,)
    up_weight: Tensor  # (K, D): Router.up.weight * input_scale
    up_bias: Tensor  # (K,)
    out_weight: Tensor  # (3, K)
    out_bias: Tensor  # (3,)

    def logits(self, windows: Tensor, window_average: Tensor) -> Tensor:
        """windows (B, W, D), window_average (B, 1, W) (see window_average) -> logits (B, 3)."""
        hidden = F.gelu(F.linear(windows - self.mean, self.up_weight, self.up_bias), approximate="tanh")
        return F.linear(torch.bmm(window_average, hidden).squeeze(1), self.out_weight, self.out_bias)


class RouterSet(nn.Module):
    """One router per layer, each reading its input standardised per dimension with the training set's mean
    and standard deviation at that layer. The standardisation is an affine map the first Linear could absorb
    (the paper's function class is unchanged), but without it the routers cannot be trained on models with
    massive activations: from layer 12 on, SmolLM2-135M carries one dimension near 24,000 on the first prompt
    token (window norms ~5,000 against ~300 elsewhere), which saturates every logit at initialisation."""

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        self.routers = nn.ModuleList(
            Router(config.hidden_size, config.bottleneck) for _ in range(config.num_layers)
        )
        self.register_buffer("input_mean", torch.zeros(config.num_layers, config.hidden_size))
        self.register_buffer("input_scale", torch.ones(config.num_layers, config.hidden_size))

    @torch.no_grad()
    def fit_input_statistics(self, features: Tensor, window_mask: Tensor, min_std: float = 1e-3) -> None:
        """Per layer and dimension: mean and 1 / std over the windows of `features` (B, L, W, D) that exist."""
        weights = window_mask.to(torch.float64)[..., None]  # (B, W, 1)
        count = weights.sum().clamp(min=1)
        for layer in range(features.shape[1]):  # one layer at a time: bounded memory at paper scale
            values = features[:, layer].to(torch.float64)  # (B, W, D)
            mean = (values * weights).sum((0, 1)) / count
            var = (((values - mean) ** 2) * weights).sum((0, 1)) / count
            self.input_mean[layer] = mean
            self.input_scale[layer] = 1.0 / var.sqrt().clamp(min=min_std)

    def standardize(self, windows: Tensor, layer: int | None = None) -> Tensor:
        """windows (B, W, D) of one layer, or (B, L, W, D) of every layer when `layer` is None."""
        if layer is None:
            return (windows - self.input_mean[None, :, None, :]) * self.input_scale[None, :, None, :]
        return (windows - self.input_mean[layer]) * self.input_scale[layer]

    def forward(self, features: Tensor, window_mask: Tensor) -> Tensor:
        """features (B, L, W, D) -> logits (B, L, 3), every layer's router on its own input. The same
        computation as calling each Router, done as two batched einsums over stacked weights (training speed)."""
        features = self.standardize(features)
        up_w = torch.stack([r.up.weight for r in self.routers])  # (L, K, D)
        up_b = torch.stack([r.up.bias for r in self.routers])  # (L, K)
        out_w = torch.stack([r.out.weight for r in self.routers])  # (L, 3, K)
        out_b = torch.stack([r.out.bias for r in self.routers])  # (L, 3)
        hidden = self.routers[0].act(torch.einsum("blwd,lkd->blwk", features, up_w) + up_b[:, None, :])
        logits = torch.einsum("blwk,lck->blwc", hidden, out_w) + out_b[:, None, :]  # (B, L, W, 3)
        return window_mean(logits, window_mask)

    def layer_logits(self, layer: int, windows: Tensor, window_mask: Tensor) -> Tensor:
        """The reference for one layer: its Router on standardised windows (B, W, D) -> logits (B, 3). Routing
        runs the same function folded (see folded)."""
        return self.routers[layer](self.standardize(windows, layer), window_mask)

    @torch.no_grad()
    def folded(self) -> list[FoldedRouter]:
        """Each layer's router as inference runs it (a snapshot: later training does not reach it)."""
        return [
            FoldedRouter(
                self.input_mean[layer].clone(),
                (router.up.weight * self.input_scale[layer]).contiguous(),
                router.up.bias.clone(),
                router.out.weight.clone(),
                router.out.bias.clone(),
            )
            for layer, router in enumerate(self.routers)
        ]

    # ---- persistence -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        with io.atomic_dir(folder) as tmp:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                tmp / "routers.safetensors",
            )
            io.write_json(tmp / "config.json", asdict(self.config))

    @classmethod
    def load(cls, folder: str | Path, model: PreTrainedModel | None = None, force: bool = False) -> RouterSet:
        """Load routers; refuse them when `model` (the one they will run on) is not the model they were
        trained on, unless forced. The same weights at another precision pass: the fingerprint matches for
        fp32 and bf16, the stored weights sample for fp16 (on GPUs without bf16)."""
        folder = Path(folder)
        try:
            config = RouterConfig(**json.loads((folder / "config.json").read_text()))
            state = load_file(folder / "routers.safetensors")
        except (OSError, ValueError, TypeError) as err:
            raise RouterMismatch(f"cannot read routers from {folder}: {err}") from err
        if model is not None and not force:
            fingerprint = weights_fingerprint(model)
            if fingerprint != config.base_fingerprint and not (
                config.base_sample and same_weights(weights_sample(model), config.base_sample)
            ):
                raise RouterMismatch(
                    f"routers in {folder} were trained on {config.base_model_name} (fingerprint "
                    f"{config.base_fingerprint}), not on this model (fingerprint {fingerprint}); pass force=True "
                    "to use them anyway"
                )
        routers = cls(config)
        routers.load_state_dict(state)
        return routers.eval()

    def check_model(self, num_layers: int, hidden_size: int) -> None:
        if (num_layers, hidden_size) != (self.config.num_layers, self.config.hidden_size):
            raise RouterMismatch(
                f"routers expect {self.config.num_layers} layers of width {self.config.hidden_size}, the model has "
                f"{num_layers} layers of width {hidden_size}"
            )


def routers_hash(folder: str | Path) -> str:
    """Content hash of a saved router set (weights and config): the registry's identity for it."""
    digest = hashlib.sha256()
    for name in ("routers.safetensors", "config.json"):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


def window_weights(prompt_mask: Tensor, windows: int) -> tuple[Tensor, Tensor]:
    """Averaging weights that pool each row's prompt tokens into min(windows, T) windows of
    T // min(windows, T) tokens (the module docstring's rule). Computed once per batch, so pooling at every
    layer is one batched matmul (see pool_windows).

    prompt_mask (B, T) True on prompt tokens (any padding or answer tokens False)
    -> weights (B, windows, T) float32, window_mask (B, windows) True for windows a row has."""
    prompt_mask = prompt_mask.bool()
    count = prompt_mask.sum(1)  # (B,)
    used = count.clamp(min=1, max=windows)
    size = (count // used).clamp(min=1)  # tokens per window
    rank = prompt_mask.long().cumsum(1) - 1  # position of each prompt token among the row's prompt tokens
    window = rank // size.unsqueeze(1)  # (B, T); tokens past the last used window are left out below
    slots = torch.arange(windows, device=prompt_mask.device).view(1, -1, 1)
    window_mask = slots.squeeze(-1) < used.unsqueeze(1)
    member = (window.unsqueeze(1) == slots) & prompt_mask.unsqueeze(1) & window_mask.unsqueeze(-1)
    return member.float() / size.view(-1, 1, 1).float(), window_mask


def window_mean(values: Tensor, window_mask: Tensor) -> Tensor:
    """values (B, ..., W, C), window_mask (B, W) -> (B, ..., C): the mean over the windows each row has."""
    weights = window_mask.to(values.dtype)
    weights = weights.view(weights.shape[0], *[1] * (values.dim() - 3), weights.shape[1], 1)
    return (values * weights).sum(-2) / weights.sum(-2).clamp(min=1)


def window_average(window_mask: Tensor) -> Tensor:
    """window_mask (B, W) -> (B, 1, W): window_mean as weights for one batched matmul (routing's form, computed
    once per batch)."""
    weights = window_mask.float()
    return (weights / weights.sum(1, keepdim=True).clamp(min=1)).unsqueeze(1)


def pool_windows(hidden: Tensor, prompt_mask: Tensor, windows: int) -> tuple[Tensor, Tensor]:
    """hidden (B, T, D) -> pooled (B, windows, D) float32 and window_mask (B, windows): window_weights."""
    weights, window_mask = window_weights(prompt_mask.to(hidden.device), windows)
    return torch.bmm(weights, hidden.float()), window_mask


_TIE_ORDER = (EXECUTE, SKIP, REPEAT)  # max() returns the first of equal maxima


def knob_decisions(logits: Sequence[Sequence[float]], knob: float) -> list[int]:
    """Counts from router logits (B rows of 3, as `logits.tolist()`) under the control knob p in [-1, 1] (our
    reading of the paper's appendix C): the router's distribution q is mixed towards all-skip for p < 0
    ((1+p) q + (-p) skip), towards all-execute for 0 < p <= 0.5 ((1-2p) q + 2p execute), and from execute
    towards all-repeat for p > 0.5. p = 0 is the router's own argmax; p = -1 skips everything, p = 1 repeats
    everything. A tie goes to execute: at p = 0.25 a saturated skip probability of 1.0 ties the execute mass,
    and skipping there would break the rule that p >= 0.25 never skips. A row with a NaN or infinite logit
    executes (the base model's layer), at every knob.
    Plain Python on purpose: routing decides a few rows at every layer of every prefill, where each tensor
    operation's fixed cost exceeds the arithmetic."""
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
