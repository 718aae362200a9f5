"""Router training on cached features (drllm_core.features): focal loss with effective-number class weights,
AdamW with warm-up and cosine decay, and held-out metrics against trivial predictors. Only the routers train;
the base model is not involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from drllm_core import io
from drllm_core.errors import ConfigError, DrllmError, config_from
from drllm_core.paths import CLASS_NAMES
from drllm_core.routers import CostRouter, RouterSet, window_mean
from drllm_core.routing import DECISION_DEPTH, NUM_CLASSES, RouterConfig, router_set_names


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
    decision_depth: float = DECISION_DEPTH  # cost routers decide this far through the model
    candidates: int = (
        8  # cost routers: the layers after the decision layer they may skip, cheapest on average
    )
    max_skips: int = 8  # cost routers: skipped layers per input, at most

    @classmethod
    def from_params(cls, train_params: dict) -> TrainConfig:
        """From the `train` section of params.yaml (`routers` names the router sets: not a training knob)."""
        router_set_names(list(train_params.get("routers") or {}), "train.routers")
        return config_from(cls, "train", train_params, ignore=("routers",))

    def __post_init__(self):
        for name in ("bottleneck", "windows", "epochs", "batch_size", "candidates", "max_skips"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"train.val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not 0 <= self.decision_depth < 1:
            raise ConfigError(f"train.decision_depth must lie in [0, 1), got {self.decision_depth}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"train.warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")


LABEL_TENSORS = (
    "labels",
    "costs",
    "keeps",
    "soft_labels",
)  # what a features file holds per example as labels


def read_features(folder: str | Path, windows: int) -> tuple[dict[str, Tensor], dict]:
    """The features stage's output (features.safetensors, meta.json), checked: a truncated file, a missing
    field or features pooled into other than `windows` windows is a DrllmError saying what to rerun."""
    folder = Path(folder)
    try:
        tensors = load_file(folder / "features.safetensors")
        meta = io.read_json(folder / "meta.json")
    except (OSError, SafetensorError, ValueError) as err:
        raise DrllmError(
            f"cannot read the features in {folder} ({type(err).__name__}: {err}): rerun `dvc repro features`"
        ) from None
    missing = sorted({"features", "window_mask", "labels"} - set(tensors)) + sorted(
        {"windows", "model", "fingerprint", "weights_sample", "tasks"} - set(meta)
    )
    if missing:
        raise DrllmError(f"the features in {folder} lack {missing}: rerun `dvc repro features`")
    if meta["windows"] != windows:
        raise ConfigError(
            f"train.windows is {windows} but the features in {folder} were pooled into {meta['windows']} "
            "windows: run `dvc repro` (features reruns with the new windows)"
        )
    return tensors, meta


def shuffled(tensors: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """The shuffled-label control: every example gets another example's labels (or skip costs), its own
    features: what routers learn from that is no function of the input."""
    order = torch.randperm(len(tensors["labels"]), generator=torch.Generator().manual_seed(seed))
    return tensors | {name: tensors[name][order] for name in LABEL_TENSORS if name in tensors}


def train_on(tensors: dict[str, Tensor], router_config: RouterConfig, config: TrainConfig):
    """A cost router on skip costs, else class routers on path labels (soft labels where present)."""
    features, window_mask = tensors["features"], tensors["window_mask"]
    if router_config.kind == "costs":
        return train_cost_router(
            features, window_mask, tensors["costs"], tensors["keeps"], router_config, config
        )
    targets = tensors["soft_labels"].float() if "soft_labels" in tensors else tensors["labels"]
    return train_routers(features, window_mask, targets, router_config, config)


def effective_number_weights(labels: Tensor, beta: float) -> Tensor:
    """Class weights (1 - beta) / (1 - beta^n_c), normalised to average 1 over the classes present."""
    counts = torch.bincount(labels.flatten(), minlength=NUM_CLASSES).double()
    weights = torch.where(counts > 0, (1 - beta) / (1 - beta**counts), torch.zeros_like(counts))
    present = (counts > 0).sum()
    return (weights / weights.sum() * present).float()


def focal_loss(logits: Tensor, targets: Tensor, gamma: float, weights: Tensor) -> Tensor:
    """Mean over examples and layers of -sum_c t_c w_c (1 - p_c)^gamma log p_c, where t is one-hot for class
    index targets (B, L) and a class distribution for soft labels (B, L, 3)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if targets.dim() == log_probs.dim() - 1:
        targets = torch.nn.functional.one_hot(targets, log_probs.shape[-1]).float()
    terms = targets.float() * weights * (1 - log_probs.exp()) ** gamma * log_probs
    return -terms.sum(-1).mean()


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
    for c, name in enumerate(CLASS_NAMES):
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

    def metrics(self) -> dict:
        """The held-out metrics against the trivial predictors (metrics/train/<name>.json)."""
        validation, baselines = self.validation, self.baselines
        return {
            "train_examples": self.train_examples,
            "val_examples": self.val_examples,
            "val_macro_f1": validation["macro_f1"],
            "val_accuracy": validation["accuracy"],
            "majority_macro_f1": baselines["majority"]["macro_f1"],
            "majority_accuracy": baselines["majority"]["accuracy"],
            "prior_macro_f1": baselines["prior"]["macro_f1"],
            "prior_accuracy": baselines["prior"]["accuracy"],
            "beats_trivial_macro_f1": validation["macro_f1"] > max(b["macro_f1"] for b in baselines.values()),
            "class_weights": self.class_weights,
            "validation": validation,
            "baselines": baselines,
        }

    def summary(self) -> str:
        m = self.metrics()
        return (
            f"held-out macro-F1 {m['val_macro_f1']:.3f} (majority {m['majority_macro_f1']:.3f}, prior "
            f"{m['prior_macro_f1']:.3f}), accuracy {m['val_accuracy']:.3f} (majority {m['majority_accuracy']:.3f})"
        )

    def confusion_rows(self) -> list[dict]:
        """One row per held-out label, (actual, predicted) class names: DVC's confusion plot."""
        confusion = self.validation["confusion"]
        return [
            {"actual": actual, "predicted": predicted}
            for a, actual in enumerate(CLASS_NAMES)
            for p, predicted in enumerate(CLASS_NAMES)
            for _ in range(confusion[a][p])
        ] or [{"actual": "", "predicted": ""}]


def train_routers(
    features: Tensor, window_mask: Tensor, targets: Tensor, router_config: RouterConfig, config: TrainConfig
) -> TrainResult:
    """Train one router per layer on cached features; the base model is not involved. `targets` are class
    labels (N, L), or soft labels (N, L, 3), whose most likely class the metrics judge."""
    labels = targets.argmax(-1) if targets.dim() == 3 else targets
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
                routers(features[batch], window_mask[batch]), targets[batch], config.gamma, weights
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        evaluation = _evaluate(routers, features, window_mask, targets, val_idx, config, weights)
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
def _evaluate(routers, features, window_mask, targets, indices, config, weights) -> dict:
    if not len(indices):
        return {}
    routers.eval()
    logits = routers(features[indices], window_mask[indices])
    labels = targets.argmax(-1) if targets.dim() == 3 else targets
    metrics = classification_metrics(logits.argmax(-1), labels[indices])
    return {
        "val_loss": focal_loss(logits, targets[indices], config.gamma, weights).item(),
        "val_accuracy": metrics["accuracy"],
        "val_macro_f1": metrics["macro_f1"],
    }


# ---- cost routers -----------------------------------------------------------------------------------------
COST_FLOOR = 1e-6  # log(KL + floor): a skip that changes nothing is a finite target
RANKS = (2, 4, 8, 16)  # the linear map's rank and the ridge penalty, chosen by cross-validation
PENALTIES = (1.0, 10.0, 100.0, 1000.0)


@dataclass
class CostTrainResult:
    routers: RouterSet
    validation: dict  # held-out: fit of the predicted costs and the answers the chosen skips change
    train_examples: int
    val_examples: int
    history: list[dict]  # the cross-validation: (rank, penalty) -> mean squared error

    def metrics(self) -> dict:
        return {"train_examples": self.train_examples, "val_examples": self.val_examples, **self.validation}

    def summary(self) -> str:
        m = self.metrics()
        return (
            f"held-out answers changed by the chosen skip {m['val_changed']:.3f} (static {m['static_changed']:.3f}, "
            f"oracle {m['oracle_changed']:.3f}); cost error {m['val_mse']:.2f} (trivial {m['trivial_mse']:.2f})"
        )

    def confusion_rows(self) -> list[dict]:
        """No classes: DVC's confusion plot gets one empty row."""
        return [{"actual": "", "predicted": ""}]


def train_cost_router(
    features: Tensor,
    window_mask: Tensor,
    costs: Tensor,
    keeps: Tensor,
    router_config: RouterConfig,
    config: TrainConfig,
) -> CostTrainResult:
    """Fit a cost router (drllm_core.routers.CostRouter) in closed form. Inputs: the pooled features
    (N, L, W, D) along the default path, and per question and layer the skip cost (KL) and whether the answer
    stayed, NaN where not searched. The candidates are the `candidates` layers after the decision layer that
    change the fewest training answers; rank and penalty are chosen by 5-fold cross-validation on the
    training questions; held-out questions judge the result against the best single candidate for all."""
    train_idx, val_idx = split_indices(len(costs), config.val_fraction, config.seed)
    layer = router_config.decision_layer
    pooled = window_mean(features[:, layer].double(), window_mask)  # (N, D)
    changed = 1 - keeps.double()
    later = torch.arange(layer + 1, router_config.num_layers)
    mean_changed = torch.nanmean(changed[train_idx][:, later], 0)
    candidates = later[
        torch.argsort(torch.nan_to_num(mean_changed, nan=2.0), stable=True)[: config.candidates]
    ]
    candidates = torch.sort(candidates).values
    targets = torch.log(costs.double()[:, candidates] + COST_FLOOR)  # (N, M)
    train_x, train_y = pooled[train_idx], targets[train_idx]
    history, unseen = [], {}
    for rank in RANKS:
        for penalty in PENALTIES:
            unseen[rank, penalty] = _out_of_fold(train_x, train_y, rank, penalty, config.seed)
            cv_mse = torch.nanmean((unseen[rank, penalty] - train_y) ** 2).item()
            history.append({"rank": rank, "penalty": penalty, "cv_mse": cv_mse})
    best = min(history, key=lambda row: (math.isnan(row["cv_mse"]), row["cv_mse"]))
    predicted = unseen[best["rank"], best["penalty"]]
    best["rank"] = _usable_rank(best["rank"], train_x)
    router_config = replace(
        router_config, candidates=candidates.tolist(), rank=min(best["rank"], len(train_idx))
    )
    routers = RouterSet(router_config)
    _fit(routers.cost, train_x, train_y, best["rank"], best["penalty"])
    with torch.no_grad():
        # The knob's scale: the costs at which the training questions skip a given share of max_skips, as
        # predicted by routers that did not see them (in-sample predictions are cheaper than new questions').
        if torch.isnan(predicted).all():  # too few questions to cross-validate: the router's own fit
            predicted = routers.cost(train_x.float()).double()
        cheapest = predicted.sort(1).values[:, : config.max_skips]
        cheapest = cheapest[~torch.isnan(cheapest)]
        routers.cost.quantiles.copy_(
            torch.quantile(
                cheapest.flatten(), torch.linspace(0, 1, len(routers.cost.quantiles), dtype=torch.float64)
            ).float()
        )
    validation = _cost_validation(
        routers.cost,
        pooled[val_idx],
        targets[val_idx],
        changed[:, candidates],
        train_idx,
        val_idx,
        targets[train_idx],
    )
    return CostTrainResult(routers.eval(), {**validation, **best}, len(train_idx), len(val_idx), history)


def _usable_rank(rank: int, x: Tensor) -> int:
    """At most as many directions as the data has (dimensions, and rows less one for the mean)."""
    return max(1, min(rank, x.shape[1], len(x) - 1))


def _fit(router, x: Tensor, y: Tensor, rank: int, penalty: float) -> None:
    """Standardise x, project it on its top `rank` principal directions and solve a ridge regression per
    target column on the rows where that target is known."""
    mean = x.mean(0)
    scale = 1.0 / x.std(0).clamp(min=1e-3)
    z = (x - mean) * scale
    _, _, vt = torch.linalg.svd(z - z.mean(0), full_matrices=False)
    projection = vt[:rank]
    p = z @ projection.T  # (N, R)
    weight, bias = (
        torch.zeros(y.shape[1], rank, dtype=torch.float64),
        torch.zeros(y.shape[1], dtype=torch.float64),
    )
    for column in range(y.shape[1]):
        known = ~torch.isnan(y[:, column])
        if not known.any():
            continue
        pk, yk = p[known], y[known, column]
        pm, ym = pk.mean(0), yk.mean()
        gram = (pk - pm).T @ (pk - pm) + penalty * torch.eye(rank, dtype=torch.float64)
        weight[column] = torch.linalg.solve(gram, (pk - pm).T @ (yk - ym))
        bias[column] = ym - pm @ weight[column]
    with torch.no_grad():
        router.input_mean.copy_(mean.float())
        router.input_scale.copy_(scale.float())
        router.projection.copy_(projection.float())
        router.weight.copy_(weight.float())
        router.bias.copy_(bias.float())


def _out_of_fold(x: Tensor, y: Tensor, rank: int, penalty: float, seed: int, folds: int = 5) -> Tensor:
    """Every row's predicted costs from a router fitted on the other folds (NaN where too few rows)."""
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    predicted = torch.full_like(y, math.nan)
    for fold in range(folds):
        held = order[fold::folds]
        kept = torch.as_tensor(np.setdiff1d(order.numpy(), held.numpy()))
        if len(kept) <= rank or not len(held):
            continue
        rank = _usable_rank(rank, x[kept])
        router = CostRouter(
            RouterConfig(1, x.shape[1], rank=rank, candidates=list(range(1, y.shape[1] + 1)), kind="costs")
        )
        _fit(router, x[kept], y[kept], rank, penalty)
        with torch.no_grad():
            predicted[held] = router(x[held].float()).double()
    return predicted


def _cost_validation(
    router, x: Tensor, y: Tensor, changed: Tensor, train_idx, val_idx, train_y: Tensor
) -> dict:
    """Held-out: the predicted costs' squared error against the trivial predictor (each candidate's training
    mean) and their rank correlation with the true costs; and, skipping one candidate per question, the
    share of answers changed by the predicted cheapest one, by the candidate that changed the fewest
    training answers (static), and by the truly cheapest (the oracle)."""
    if not len(x):
        return {}
    with torch.no_grad():
        predicted = router(x.float()).double()
    trivial = torch.nanmean(train_y, 0).expand_as(y)
    rows = torch.arange(len(x))
    static = int(torch.argmin(torch.nan_to_num(torch.nanmean(changed[train_idx], 0), nan=2.0)))
    changed = changed[val_idx]
    ranks = [
        float(
            np.corrcoef(
                np.argsort(np.argsort(predicted[k, :].numpy())), np.argsort(np.argsort(y[k, :].numpy()))
            )[0, 1]
        )
        for k in range(len(x))
        if not torch.isnan(y[k]).any()
    ]
    return {
        "val_mse": torch.nanmean((predicted - y) ** 2).item(),
        "trivial_mse": torch.nanmean((trivial - y) ** 2).item(),
        "val_rank_correlation": float(np.nanmean(ranks)) if ranks else math.nan,
        "val_changed": torch.nanmean(changed[rows, predicted.argmin(1)]).item(),
        "static_changed": torch.nanmean(changed[:, static]).item(),
        "oracle_changed": torch.nanmean(changed[rows, torch.nan_to_num(y, nan=math.inf).argmin(1)]).item(),
    }
