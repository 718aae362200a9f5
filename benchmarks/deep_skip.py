"""Can a router tell which questions tolerate a deep skip? `python -m benchmarks.deep_skip` (needs the
default pipeline's labelled search questions and routers: `dvc repro train`).

A budget of about one block per token keeps more of vanilla's answers spent as a deep skip on a few
questions than as one skip on every question (docs/experiments.md, rounds 3 to 6), so a router's gain over a
fixed single skip mixes two things: the shape of its budget and what it reads in the prompt. This benchmark
isolates the second. The deep path skips every candidate layer of the served cost router (`--routers`), or
the layers `--skips` names; it is scored, with vanilla, on every labelled search question. Then, in 5-fold
cross-validation over those questions, the cost router's own fit (drllm_core.training, the deep path's KL
from vanilla as its one target) predicts from the pooled state entering each `--layers` decision layer which
questions it costs least; at each `--blocks` budget the questions predicted cheapest take the deep path,
the others vanilla's:

  router      the questions the fit predicts cheapest
  shuffled    the same fit on costs shuffled across questions (the pipeline's control)
  random      seeded random questions (mean over `--draws` draws, with the 2.5-97.5% range)
  confidence  no fit: the questions whose answer is surest (the lead of the top choice's score over the
              runner-up's, in log probability) when the model exits early, entering the deep path's first
              skipped layer: a later state, read at the answer's own positions, at the cost of one head
  tuned lens  the same lead read at the same layer through a tuned lens fitted on the other folds
              (tuned_lens_leads): an affine map onto the last layer's residual stream before the head
  vanilla's confidence  the same lead after the full forward: what the router would need to know
  oracle      the questions the deep path truly costs least (an upper bound no prompt router reaches)

Reported: the share of vanilla's answers kept and the accuracy, and the router against the shuffled
control, paired (McNemar). Held-out questions are search questions, never a test set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from benchmarks.common import command_line, print_table, write_json
from drllm_core.comparison import with_agreement
from drllm_core.engine import HiddenState, PathEngine
from drllm_core.evaluation import result_rows
from drllm_core.io import read_yaml
from drllm_core.models import ModelSpec, load_model
from drllm_core.paths import EXECUTE, SKIP
from drllm_core.routers import window_mean
from drllm_core.routing import RouterConfig, read_router_config
from drllm_core.stats import paired_comparison
from drllm_core.tasks.answers import Decision, decide_choice
from drllm_core.tasks.packing import PackedBatch, choice_loglikelihoods
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.training import TrainConfig, read_features, shuffled, train_cost_router


def cheapest(scores: np.ndarray, count: int) -> np.ndarray:
    """A mask of the `count` questions with the lowest scores."""
    mask = np.zeros(len(scores), bool)
    mask[np.argsort(scores, kind="stable")[:count]] = True
    return mask


def lead(scores) -> float:
    """How sure a choice decision is, from a stored row's per-choice scores (a Decision carries it as `lead`):
    the top choice's score minus the runner-up's, the log of the ratio of their probabilities. (Their
    difference in probability saturates: summed over a choice's tokens, scores often differ by tens of nats,
    and the top tenth of the questions would tie at exactly 1.)"""
    top, runner_up = np.sort(np.asarray(scores, np.float64))[[-1, -2]]
    return float(top - runner_up)


@dataclass
class LensBatch:
    """One batch of questions run on vanilla's path: the residual stream entering the lens's layer and the
    state after the last layer, with the positions that score the choices."""

    questions: list[int]  # indices into the examples
    batch: PackedBatch
    entering: Tensor  # (B, T, D) float32
    final: HiddenState
    scored: list[Tensor]  # per row: the positions (the state's own tokens) whose logits score its choices


def lens_batches(scorer: ExampleScorer, examples, layer: int, batch_size: int):
    """LensBatch after LensBatch, in the scorer's order and batches (vanilla's numerics to the bit)."""
    engine = scorer.engine
    order = sorted(range(len(examples)), key=lambda i: len(scorer.prompt(examples[i]).context))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = PackedBatch.collate([scorer.pack(examples[i]) for i in chunk], scorer.tokenizer.pad_token_id)
        counts = engine.default_paths(len(chunk))
        entering = engine.run(batch.embed(engine, scorer.shared_prefix), counts, stop=layer)
        final = engine.run(entering, counts)
        rows, slots = torch.nonzero(batch.target_choice >= 0, as_tuple=True)
        at = batch.predict_at[rows, slots] - final.prefix_length
        scored = [at[rows == row] for row in range(len(chunk))]
        yield LensBatch(chunk, batch, entering.hidden.float(), final, scored)


def fit_lens(batches: list[LensBatch], questions: set[int]) -> tuple[Tensor, Tensor, Tensor]:
    """A tuned lens (Belrose et al., 2023) fitted on `questions`: the affine map, by ridge regression at the
    positions scoring their choices, of the residual stream entering the lens's layer onto the last layer's.
    Returns (input mean, weight, output mean)."""
    pairs = [
        (lens.entering[row, lens.scored[row]], lens.final.hidden[row, lens.scored[row]])
        for lens in batches
        for row, question in enumerate(lens.questions)
        if question in questions
    ]
    x, y = (torch.cat(side).double() for side in zip(*pairs, strict=True))
    x_mean, y_mean = x.mean(0), y.mean(0)
    gram = (x - x_mean).T @ (x - x_mean) + 1e-3 * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    return x_mean, torch.linalg.solve(gram, (x - x_mean).T @ (y - y_mean)), y_mean


def lens_decisions(
    scorer: ExampleScorer, examples, batches, fitted, questions: set[int] | None = None
) -> dict[int, Decision]:
    """question -> its choice decision read through the lens `fitted` (every question of `batches`, or those
    in `questions`): the final norm and head applied to the mapped residual stream. `fitted` None reads the
    last layer's own state (vanilla's decision, to the bit); identity_lens reads the early exit."""
    decisions = {}
    for lens in batches:
        rows = [row for row, q in enumerate(lens.questions) if questions is None or q in questions]
        if not rows:
            continue
        hidden = lens.final.hidden
        if fitted is not None:
            x_mean, weight, y_mean = fitted
            hidden = ((lens.entering.double() - x_mean) @ weight + y_mean).to(hidden.dtype)
        scores = choice_loglikelihoods(scorer.engine, replace(lens.final, hidden=hidden), lens.batch)
        for row in rows:
            example = examples[lens.questions[row]]
            decisions[lens.questions[row]] = decide_choice(
                scores[row], example, scorer.settings(example.task)
            )
    return decisions


def identity_lens(dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The lens that maps nothing: the final norm and head on the residual stream as it is (the early exit)."""
    zero = torch.zeros(dim, dtype=torch.float64)
    return zero, torch.eye(dim, dtype=torch.float64), zero


def five_folds(count: int, seed: int) -> list[np.ndarray]:
    """The folds every cross-validated fit here holds out in turn: a seeded split of `count` questions."""
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(order[fold::5]) for fold in range(5)]


def out_of_fold_decisions(scorer: ExampleScorer, examples, batches: list[LensBatch], folds) -> list[Decision]:
    """Every question's decision read through a tuned lens fitted on the other folds (`batches`: lens_batches)."""
    decisions = {}
    for held in folds:
        held_out = set(held.tolist())
        fitted = fit_lens(batches, set(range(len(examples))) - held_out)
        decisions |= lens_decisions(scorer, examples, batches, fitted, held_out)
    return [decisions[q] for q in range(len(examples))]


def tuned_lens_leads(scorer: ExampleScorer, examples, batches: list[LensBatch], folds) -> np.ndarray:
    """Every question's lead read through a tuned lens fitted on the other folds (`batches`: lens_batches)."""
    return np.array([d.lead for d in out_of_fold_decisions(scorer, examples, batches, folds)])


def out_of_fold_costs(tensors, costs, layer, column, train, folds, seed, shuffle) -> np.ndarray:
    """Every question's predicted deep-path cost (log KL) from a cost router fitted on the other folds:
    `costs` (N, 1), the KL, sits in one candidate column after the decision layer, so the pipeline's fit
    (the log of the cost, rank and penalty chosen by its own cross-validation) is what predicts it."""
    count, layers = costs.shape[0], tensors["features"].shape[1]
    base = RouterConfig(layers, tensors["features"].shape[-1], kind="costs", decision_layer=layer)
    config = replace(train, candidates=1, max_skips=1, val_fraction=1e-9)  # the folds hold questions out
    targets = torch.full((count, layers), float("nan"), dtype=torch.float64)
    targets[:, column] = torch.as_tensor(costs[:, 0])
    labels = {**tensors, "costs": targets, "keeps": torch.where(targets.isnan(), targets, 1.0)}
    predicted = np.zeros(count)
    for fold, held in enumerate(folds):
        kept = np.setdiff1d(np.arange(count), held)
        part = {name: value[kept] for name, value in labels.items()}
        if shuffle:
            part = shuffled(part, seed + fold)
        router = train_cost_router(
            part["features"], part["window_mask"], part["costs"], part["keeps"], base, config
        ).routers.cost.eval()
        pooled = window_mean(tensors["features"][held, layer].double(), tensors["window_mask"][held])
        with torch.no_grad():
            predicted[held] = router(pooled.float())[:, 0].double().numpy()
    return predicted


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", default="data/features/singles")
    parser.add_argument("--search-set", default="data/prepared/search.parquet")
    parser.add_argument("--routers", default="models/routers/costs")
    parser.add_argument(
        "--layers",
        default=None,
        help="decision layers, comma-separated (default: the routers' "
        "and the last before their first candidate)",
    )
    parser.add_argument(
        "--skips",
        default=None,
        help="the deep path's skipped layers, comma-separated (default: the candidates)",
    )
    parser.add_argument("--blocks", default="1.2,2.0", help="blocks saved per question, every policy")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    train = TrainConfig.from_params(params["train"])
    tensors, meta = read_features(args.features, train.windows)
    routing = read_router_config(args.routers)
    if routing.kind != "costs":
        parser.error(f"{args.routers} holds {routing.kind} routers: this benchmark needs cost routers")
    candidates, layers = routing.candidates[: train.max_skips], routing.num_layers
    candidates = sorted(int(v) for v in args.skips.split(",")) if args.skips else candidates
    decision = sorted({routing.decision_layer, min(candidates) - 1})
    decision = [int(v) for v in args.layers.split(",")] if args.layers else decision
    if min(decision) < 0 or max(decision) >= min(candidates) or max(candidates) >= layers:
        parser.error(
            f"decision layers {decision} must come before every skipped layer {candidates}, all within the "
            f"model's {layers} layers"
        )
    by_id = {e.example_id: e for e in examples_from_frame(pd.read_parquet(args.search_set))}
    examples = [by_id[i] for i in meta["example_ids"]]

    loaded = load_model(ModelSpec.from_params(params["model"]))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks", {}))
    folds = five_folds(len(examples), args.seed)
    lenses = list(lens_batches(scorer, examples, min(candidates), args.batch_size))
    paths = {  # per layer: executed or skipped (vanilla: the default path)
        "vanilla": [EXECUTE] * layers,
        "deep": [SKIP if i in candidates else EXECUTE for i in range(layers)],
        "exit": [SKIP if i >= min(candidates) else EXECUTE for i in range(layers)],  # the early exit
    }
    read = {  # vanilla and the early exit, read from the lens batches (to the bit as the scorer would)
        "vanilla": lens_decisions(scorer, examples, lenses, None),
        "exit": lens_decisions(scorer, examples, lenses, identity_lens(lenses[0].entering.shape[-1])),
    }

    def scored(name: str, path: list[int]) -> pd.DataFrame:
        """Every question under one path, as evaluate scores a configuration."""
        if name in read:
            decisions = [replace(read[name][q], path=tuple(path)) for q in range(len(examples))]
        else:
            decisions = scorer.score(examples, torch.tensor([path] * len(examples)), args.batch_size)
        return pd.DataFrame(result_rows(name, "search", examples, decisions))

    frame = with_agreement(pd.concat(scored(name, path) for name, path in paths.items()))  # agreement, KL
    vanilla, skipped, exited = (frame[frame["config"] == name] for name in paths)
    confidence = {
        name: part["scores"].map(lead).to_numpy() for name, part in (("exit", exited), ("vanilla", vanilla))
    }
    kept, kl = skipped["agrees"].to_numpy(float), skipped["kl"].to_numpy()
    right = {"vanilla": vanilla["correct"].to_numpy(float), "deep": skipped["correct"].to_numpy(float)}
    confidence["tuned lens"] = tuned_lens_leads(scorer, examples, lenses, folds)
    predicted = {  # (decision layer, policy) -> every question's out-of-fold predicted cost
        (layer, name): out_of_fold_costs(
            tensors, kl[:, None], layer, layer + 1, train, folds, args.seed, shuffle
        )
        for layer in decision
        for name, shuffle in (("router", False), ("shuffled", True))
    }

    def outcome(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Answers kept and right when the masked questions take the deep path, the others vanilla's."""
        return np.where(mask, kept, 1.0), np.where(mask, right["deep"], right["vanilla"])

    rows, pairs = [], []
    for budget in (float(b) for b in args.blocks.split(",")):
        count = round(budget * len(examples) / len(candidates))
        common = {"blocks_saved": count * len(candidates) / len(examples), "questions_deep": count}
        draws = [
            outcome(cheapest(np.random.default_rng(args.seed + d).random(len(kl)), count))
            for d in range(args.draws)
        ]
        share = np.array([k.mean() for k, _ in draws])
        rows.append(
            {
                **common,
                "policy": "random",
                "agreement": float(share.mean()),
                "agreement_range": [round(float(np.percentile(share, q)), 3) for q in (2.5, 97.5)],
                "accuracy": float(np.mean([c.mean() for _, c in draws])),
            }
        )
        policies = {
            "oracle": outcome(cheapest(kl, count)),
            f"confidence, exit at layer {min(candidates)}": outcome(cheapest(-confidence["exit"], count)),
            f"tuned lens, layer {min(candidates)}": outcome(cheapest(-confidence["tuned lens"], count)),
            "vanilla's confidence": outcome(cheapest(-confidence["vanilla"], count)),
        }
        policies |= {
            f"{name}, layer {layer}": outcome(cheapest(p, count)) for (layer, name), p in predicted.items()
        }
        rows += [
            {**common, "policy": name, "agreement": agreement.mean(), "accuracy": accuracy.mean()}
            for name, (agreement, accuracy) in policies.items()
        ]
        for layer in decision:
            versus = paired_comparison(
                policies[f"router, layer {layer}"][0], policies[f"shuffled, layer {layer}"][0]
            )
            pairs.append(
                {
                    "blocks_saved": common["blocks_saved"],
                    "decision_layer": layer,
                    "agreement_difference": versus["difference"],
                    "ci": [round(float(versus["ci_low"]), 3), round(float(versus["ci_high"]), 3)],
                    "mcnemar_p": versus["mcnemar_p"],
                }
            )
    title = (
        f"Deep path (skipping layers {candidates}) on {len(examples)} labelled search questions: it keeps "
        f"{kept.mean():.1%} of vanilla's answers alone; vanilla accuracy {right['vanilla'].mean():.1%} "
        f"({meta['model']}, {loaded.numerics['dtype']})"
    )
    print_table(title, rows)
    print_table("Router against its shuffled control: agreement with vanilla, paired", pairs)
    write_json(
        f"deep_skip-{meta['model']}" + (f"-skips-{'-'.join(map(str, candidates))}" if args.skips else ""),
        {
            "model": meta["model"],
            "numerics": loaded.numerics,
            "args": vars(args),
            "deep_path_skips": candidates,
            "deep_path_kept": float(kept.mean()),
            "rows": rows,
            "router_vs_shuffled": pairs,
        },
    )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
