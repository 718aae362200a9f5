"""Router modules: one tiny MLP per decoder layer that picks skip (0), execute (1) or repeat (2) for an input.

Input: the hidden state entering the layer over the prompt tokens, split into min(W, T) windows of
T // min(W, T) tokens each, in order (the T mod min(W, T) trailing tokens are left out, the paper's rule),
each mean-pooled and standardised; the router scores every window and averages the logits.

A router folder holds routers.safetensors and config.json (drllm_core.routing: the base model, shapes,
provenance and how the set routes). Loading checks both, and the base model; nothing is ever unpickled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from drllm_core import io
from drllm_core.models import same_weights, weights_fingerprint, weights_sample
from drllm_core.routing import (
    NUM_CLASSES,
    RouterConfig,
    RouterMismatch,
    Routing,
    check_knob,
    read_router_config,
)


class Router(nn.Module):
    """One layer's parameters: Linear(d, bottleneck) -> GELU(tanh) -> Linear(bottleneck, 3), applied by
    RouterSet.forward to every window, logits averaged."""

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.up = nn.Linear(hidden_size, bottleneck)
        self.act = nn.GELU(approximate="tanh")
        self.out = nn.Linear(bottleneck, NUM_CLASSES)
        for linear in (self.up, self.out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)  # the paper: zero bias beat a class-frequency bias


@dataclass(frozen=True)
class FoldedRouter:
    """One layer's router as routing runs it: RouterSet.forward's function with the standardisation's scale
    folded into the first Linear and the window average taken before the last Linear (both linear), five
    tensor operations per layer of a prefill. The mean stays a subtraction: folded into the bias it would
    cancel in float32 against massive activations (docs/method.md). Rows need at least one window."""

    mean: Tensor  # (D,)
    up_weight: Tensor  # (K, D): Router.up.weight * input_scale
    up_bias: Tensor  # (K,)
    out_weight: Tensor  # (3, K)
    out_bias: Tensor  # (3,)

    def logits(self, windows: Tensor, window_average: Tensor) -> Tensor:
        """windows (B, W, D), window_average (B, 1, W) (see window_average) -> logits (B, 3)."""
        hidden = F.gelu(F.linear(windows - self.mean, self.up_weight, self.up_bias), approximate="tanh")
        return F.linear(torch.bmm(window_average, hidden).squeeze(1), self.out_weight, self.out_bias)


class CostRouter(nn.Module):
    """The `costs` router: the hidden state entering the decision layer, mean-pooled over the prompt's windows
    and standardised, mapped linearly (a rank-`rank` projection, then a weight per candidate) to the
    predicted log KL divergence of skipping each candidate layer alone (drllm_core.training fits it in
    closed form). `quantiles` are the quantiles of each training question's `max_skips` cheapest predicted
    costs: the knob's scale, so that knob p skips (1 - p) / 2 * max_skips layers per training question on
    average."""

    def __init__(self, config: RouterConfig, quantiles: int = 101):
        super().__init__()
        dims, rank, count = config.hidden_size, config.rank, len(config.candidates)
        self.register_buffer("input_mean", torch.zeros(dims))
        self.register_buffer("input_scale", torch.ones(dims))
        self.register_buffer("projection", torch.zeros(rank, dims))
        self.register_buffer("weight", torch.zeros(count, rank))
        self.register_buffer("bias", torch.zeros(count))
        self.register_buffer("quantiles", torch.zeros(quantiles))

    def forward(self, pooled: Tensor) -> Tensor:
        """pooled (B, D): the mean over each row's windows -> predicted log costs (B, candidates)."""
        standardised = (pooled.float() - self.input_mean) * self.input_scale
        return F.linear(F.linear(standardised, self.projection), self.weight, self.bias)

    def threshold(self, knob: float) -> float:
        """The cost at or below which a candidate is skipped: the (1 - knob) / 2 quantile of the training
        questions' cheapest predictions (see the class docstring); knob 1 skips nothing."""
        if knob >= 1.0:
            return -math.inf
        position = (1 - knob) / 2 * (len(self.quantiles) - 1)
        low = math.floor(position)
        high = min(low + 1, len(self.quantiles) - 1)
        weight = position - low
        return float((1 - weight) * self.quantiles[low] + weight * self.quantiles[high])


class RouterSet(nn.Module):
    """The routers of one folder. `classes` (the paper): one router per layer, each reading its input
    standardised per dimension with the training set's mean and standard deviation at that layer, an affine
    map the first Linear could absorb (the paper's function class), without which routers cannot be trained
    on models with massive activations (docs/method.md). `costs`: one CostRouter."""

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        if config.kind == "costs":
            self.cost = CostRouter(config)
            self.routers = nn.ModuleList()
            return
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
        """features (B, L, W, D) -> logits (B, L, 3): every layer's router on its own standardised windows,
        logits averaged over each row's windows; two batched einsums over the stacked weights."""
        features = self.standardize(features)
        up_w = torch.stack([r.up.weight for r in self.routers])  # (L, K, D)
        up_b = torch.stack([r.up.bias for r in self.routers])  # (L, K)
        out_w = torch.stack([r.out.weight for r in self.routers])  # (L, 3, K)
        out_b = torch.stack([r.out.bias for r in self.routers])  # (L, 3)
        hidden = self.routers[0].act(torch.einsum("blwd,lkd->blwk", features, up_w) + up_b[:, None, :])
        logits = torch.einsum("blwk,lck->blwc", hidden, out_w) + out_b[:, None, :]  # (B, L, W, 3)
        return window_mean(logits, window_mask)

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
        """Load routers, checking the folder is whole, and refuse them when `model` (the one they will run
        on) is not their base model, unless forced. The same weights at another precision pass: the
        fingerprint matches for fp32 and bf16, the stored weights sample for fp16 (GPUs without bf16)."""
        folder = Path(folder)
        config = cls.read_config(folder)
        try:
            state = load_file(folder / "routers.safetensors")
        except (OSError, SafetensorError) as err:
            raise RouterMismatch(
                f"cannot read {folder / 'routers.safetensors'} ({err}): the file is missing or truncated; "
                "retrain the routers (dvc repro train)"
            ) from None
        if model is not None:
            check_base_model(config, model, folder, force)
        routers = cls(config)
        expected = {name: tuple(value.shape) for name, value in routers.state_dict().items()}
        found = {name: tuple(value.shape) for name, value in state.items()}
        if found != expected:
            wrong = sorted(set(expected.items()) ^ set(found.items()))[:4]
            raise RouterMismatch(
                f"{folder}: the weights do not match config.json (e.g. {wrong}); retrain them"
            )
        routers.load_state_dict(state)
        return routers.eval()

    @staticmethod
    def read_config(folder: str | Path) -> RouterConfig:
        return read_router_config(folder)

    @classmethod
    def read_routing(cls, folder: str | Path) -> Routing:
        """How the router set in `folder` routes, without loading its weights."""
        return read_router_config(folder).routing

    def with_knob(self, knob: float) -> RouterSet:
        """The same routers, calibrated: their routing records `knob`."""
        config = replace(self.config, routing=replace(self.config.routing, knob=check_knob(knob, "knob")))
        routers = RouterSet(config)
        routers.load_state_dict(self.state_dict())
        return routers.eval()

    def check_model(self, num_layers: int, hidden_size: int) -> None:
        if (num_layers, hidden_size) != (self.config.num_layers, self.config.hidden_size):
            raise RouterMismatch(
                f"routers expect {self.config.num_layers} layers of width {self.config.hidden_size}, the model has "
                f"{num_layers} layers of width {hidden_size}"
            )


def check_base_model(config: RouterConfig, model: PreTrainedModel, folder, force: bool = False) -> None:
    """Refuse routers for another model (unless forced): other shapes always, other weights by fingerprint."""
    shape = (model.config.num_hidden_layers, model.config.hidden_size)
    if shape != (config.num_layers, config.hidden_size):
        raise RouterMismatch(
            f"routers in {folder} expect {config.num_layers} layers of width {config.hidden_size} "
            f"({config.base_model_name}), this model has {shape[0]} of width {shape[1]}"
        )
    if force:
        return
    fingerprint = weights_fingerprint(model)
    if fingerprint != config.base_fingerprint and not (
        config.base_sample and same_weights(weights_sample(model), config.base_sample)
    ):
        raise RouterMismatch(
            f"routers in {folder} were trained on {config.base_model_name} (fingerprint "
            f"{config.base_fingerprint}), not on this model (fingerprint {fingerprint}); pass force=True (--force) "
            "to use them anyway"
        )


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
