"""Router training: teacher-forced feature cache, focal loss with effective-number class weights, and metrics.

Teacher forcing, as in the paper: the model follows each example's labelled path while the router inputs are
recorded, so router l learns from the hidden state the labelled decisions before it produce. Because the
base model is frozen and the decisions are discrete, those inputs are computed once (`build_features`) and
training touches only the routers: no LLM forward per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drllm_core.errors import ConfigError, config_from
from drllm_core.routers import NUM_CLASSES, RouterConfig, RouterSet, pool_windows
from drllm_core.tasks.evaluator import ExampleScorer
from drllm_core.tasks.schema import Example

CLASSES = ("skip", "execute", "repeat")


@torch.no_grad()
def build_features(
    scorer: ExampleScorer, examples: Sequence[Example], labels: Tensor, windows: int, batch_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Pooled router inputs along each example's labelled path: features (N, L, W, D), window mask (N, W).
    The hidden state entering layer l is pooled over the prompt tokens, then layer l runs with its label."""
    engine = scorer.engine
    features, masks = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        rows = [scorer.prompt_ids(e) for e in chunk]
        width = max(len(r) for r in rows)
        pad = scorer.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        chunk_labels = labels[start : start + batch_size].clone()
        pooled_per_layer: list[Tensor] = []
        window_mask = None

        def record(
            layer: int, hidden: Tensor, mask=mask, store=pooled_per_layer, chunk_labels=chunk_labels
        ) -> Tensor:
            nonlocal window_mask
            pooled, window_mask = pool_windows(hidden, mask.bool(), windows)
            store.append(pooled.to(torch.bfloat16).cpu())
            return chunk_labels[:, layer]

        engine.run(engine.embed(ids, mask), chunk_labels, decide=record)
        features.append(torch.stack(pooled_per_layer, dim=1))  # (B, L, W, D)
        masks.append(window_mask.cpu())
    return torch.cat(features), torch.cat(masks)


@dataclass(frozen=True)
class TrainConfig:
    """The `train` knobs of params.yaml (paper values where it has them)."""

    bottleneck: int = 128
    windows: int = 8
    epochs: int = 25
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # share of steps with linear warm-up before the cosine decay
    gamma: float = 2.0  # focal loss focusing
    beta: float = 0.999  # effective-number class weights
    val_fraction: float = 0.2  # search examples held out to judge the routers
    seed: int = 0

    @classmethod
    def from_params(cls, train_params: dict) -> TrainConfig:
        """From the `train` section of params.yaml (`routers` names the router sets: not a training knob)."""
        return config_from(cls, "train", train_params, ignore=("routers",))

    def __post_init__(self):
        for name in ("bottleneck", "windows", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"train.val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"train.warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")


def effective_number_weights(labels: Tensor, beta: float) -> Tensor:
    """Class weights (1 - beta) / (1 - beta^n_c), normalised to average 1 over the classes present."""
    counts = torch.bincount(labels.flatten(), minlength=NUM_CLASSES).double()
    weights = torch.where(counts > 0, (1 - beta) / (1 - beta**counts), torch.zeros_like(counts))
    present = (counts > 0).sum()
    return (weights / weights.sum() * present).float()


def focal_loss(logits: Tensor, targets: Tensor, gamma: float, weights: Tensor) -> Tensor:
    """Mean over examples and layers of -w_c (1 - p_t)^gamma log p_t."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    log_pt = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (-weights[targets] * (1 - log_pt.exp()) ** gamma * log_pt).mean()


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    held_out = round(count * val_fraction)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def classification_metrics(predicted: Tensor, target: Tensor) -> dict:
    """Per-class precision/recall/F1, macro-F1 (over classes present in target or predictions), accuracy,
    per-layer accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    confusion.index_put_(
        (target.flatten(), predicted.flatten()), torch.ones(target.numel(), dtype=torch.long), accumulate=True
    )
    per_class, f1s = {}, []
    for c, name in enumerate(CLASSES):
        tp = confusion[c, c].item()
        predicted_c, actual_c = confusion[:, c].sum().item(), confusion[c].sum().item()
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / actual_c if actual_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual_c}
        if actual_c or predicted_c:
            f1s.append(f1)
    return {
        "accuracy": (predicted == target).float().mean().item(),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "per_layer_accuracy": (predicted == target).float().mean(0).tolist(),
        "confusion": confusion.tolist(),
    }


def trivial_predictions(train_labels: Tensor, count: int, seed: int) -> dict[str, Tensor]:
    """The two predictors routers must beat: each layer's majority training label, and labels drawn from
    each layer's training class distribution."""
    layers = train_labels.shape[1]
    per_layer = torch.stack(
        [torch.bincount(train_labels[:, l], minlength=NUM_CLASSES) for l in range(layers)]
    ).float()
    majority = per_layer.argmax(1).expand(count, -1)
    generator = torch.Generator().manual_seed(seed)
    prior = torch.multinomial(
        per_layer / per_layer.sum(1, keepdim=True), count, replacement=True, generator=generator
    ).T
    return {"majority": majority, "prior": prior}


@dataclass
class TrainResult:
    routers: RouterSet
    history: list[dict]  # per epoch: train loss, validation loss, accuracy and macro-F1
    validation: dict  # final classification metrics on held-out examples
    baselines: dict  # the same metrics for the trivial predictors
    train_examples: int
    val_examples: int
    class_weights: list[float]


def train_routers(
    features: Tensor, window_mask: Tensor, labels: Tensor, router_config: RouterConfig, config: TrainConfig
) -> TrainResult:
    """Train one router per layer on cached features; the base model is not involved."""
    torch.manual_seed(config.seed)
    train_idx, val_idx = split_indices(len(labels), config.val_fraction, config.seed)
    features = features.float()
    routers = RouterSet(router_config)
    routers.fit_input_statistics(features[train_idx], window_mask[train_idx])
    weights = effective_number_weights(labels[train_idx], config.beta)
    optimizer = torch.optim.AdamW(
        routers.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    steps_per_epoch = max(1, math.ceil(len(train_idx) / config.batch_size))
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        ),
    )
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(config.epochs):
        routers.train()
        order = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = focal_loss(
                routers(features[batch], window_mask[batch]), labels[batch], config.gamma, weights
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        evaluation = _evaluate(routers, features, window_mask, labels, val_idx, config, weights)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **evaluation})
    routers.eval()
    with torch.no_grad():
        predicted = (
            routers(features[val_idx], window_mask[val_idx]).argmax(-1) if len(val_idx) else labels[:0]
        )
    validation = classification_metrics(predicted, labels[val_idx])
    trivial = trivial_predictions(labels[train_idx], len(val_idx), config.seed)
    baselines = {name: classification_metrics(pred, labels[val_idx]) for name, pred in trivial.items()}
    return TrainResult(
        routers, history, validation, baselines, len(train_idx), len(val_idx), weights.tolist()
    )


@torch.no_grad()
def _evaluate(routers, features, window_mask, labels, indices, config, weights) -> dict:
    if not len(indices):
        return {}
    routers.eval()
    logits = routers(features[indices], window_mask[indices])
    metrics = classification_metrics(logits.argmax(-1), labels[indices])
    return {
        "val_loss": focal_loss(logits, labels[indices], config.gamma, weights).item(),
        "val_accuracy": metrics["accuracy"],
        "val_macro_f1": metrics["macro_f1"],
    }
