"""Routing by the answer's confidence, on test questions: `python -m benchmarks.tuned_lens` (needs an evaluated
pipeline, `dvc repro evaluate`; run in the full-test workspace of presets/full-test.yaml for every ARC test
question).

benchmarks.deep_skip finds, in cross-validation over the labelled search questions, that a tuned lens (an affine
map of the residual stream partway through onto the last layer's, fitted by ridge regression) reads how sure
vanilla is of its answer nearly as well as the full forward. Here every choice is made on the search questions,
for each budget b of `--blocks` (blocks saved per search question), and then judged on evaluate's test
questions (`--sets`, `--results`), paired against the configurations `--versus` that evaluate scored there, in
accuracy and agreement with vanilla (McNemar). A policy spends the budget on the questions it is surest of, the
others keep vanilla's answer:

  deep_tuned_lens     the deep path (every candidate of `--routers` skipped) on the questions whose lead, read
                      through a tuned lens entering its first skipped layer, passes a threshold: the quantile
                      of the out-of-fold leads on the search questions that spends b
  deep_vanilla_confidence  the same with vanilla's own lead after the full forward: not a router (it needs
                      every layer), how well any read of the answer's confidence could choose
  exit                the early exit: every layer from m on skipped (a path) on the questions whose exit is
                      surest, its answer the final norm and head on the residual stream entering layer m
  lens_exit           the same read through the tuned lens at m (fitted on every search question): the answer
                      is the lens's, one D x D map beside the frozen model

For the exits, m is the layer of `--exit-layers` whose exit keeps most of vanilla's answers on the search
questions at that budget (the tuned lens's out of fold), with its threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from benchmarks.common import command_line, print_table, write_json
from benchmarks.deep_skip import (
    fit_lens,
    five_folds,
    identity_lens,
    lead,
    lens_batches,
    lens_decisions,
    out_of_fold_decisions,
)
from drllm_core.comparison import compare, with_agreement
from drllm_core.engine import PathEngine
from drllm_core.evaluation import result_rows
from drllm_core.io import read_json, read_yaml
from drllm_core.models import ModelSpec, load_model
from drllm_core.paths import EXECUTE, SKIP
from drllm_core.routing import read_router_config
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.training import TrainConfig


@dataclass
class Choice:
    """A policy's choice at one budget, made on the search questions: the layer it reads, through which lens
    (None: vanilla's own last layer), its threshold, and what its questions take (`deep`: the deep path;
    `exit`: the answer read through the lens)."""

    policy: str
    budget: float
    layer: int
    reader: str  # "vanilla", "exit" or "lens": what `lens` is
    lens: tuple | None
    threshold: float
    takes: str
    search_agreement: float


def spend(leads: np.ndarray, share: float) -> tuple[float, np.ndarray]:
    """The threshold on `leads` that sends `share` of the questions, and the mask it sends."""
    threshold = float(np.quantile(leads, 1 - share))
    return threshold, leads > threshold


def search_choices(scorer, search, candidates, num_layers, budgets, exit_layers, batch_size, seed) -> list:
    """Every policy's Choice at every budget, made on the search questions alone."""
    folds, choices, exits = five_folds(len(search), seed), [], {}
    for layer in sorted({candidates[0], *exit_layers}):
        batches = list(lens_batches(scorer, search, layer, batch_size))
        vanilla = lens_decisions(scorer, search, batches, None)
        vanilla = [vanilla[q] for q in range(len(search))]
        held_out = out_of_fold_decisions(scorer, search, batches, folds)
        fitted = fit_lens(batches, set(range(len(search))))  # every search question, once the choice is made
        no_lens = identity_lens(batches[0].entering.shape[-1])
        early = lens_decisions(scorer, search, batches, no_lens)
        reads = {  # exit policy -> (its decisions on the search questions, reader, lens)
            "exit": ([early[q] for q in range(len(search))], "exit", no_lens),
            "lens_exit": (held_out, "lens", fitted),
        }
        for budget in budgets:
            if layer == candidates[0]:
                for policy, decisions, reader, lens in (
                    ("deep_tuned_lens", held_out, "lens", fitted),
                    ("deep_vanilla_confidence", vanilla, "vanilla", None),
                ):
                    leads = np.array([d.lead for d in decisions])
                    threshold, _ = spend(leads, budget / len(candidates))
                    choices.append(Choice(policy, budget, layer, reader, lens, threshold, "deep", math.nan))
            share = budget / (num_layers - layer)
            if layer not in exit_layers or share >= 1:
                continue
            for policy, (decisions, reader, lens) in reads.items():
                threshold, sent = spend(np.array([d.lead for d in decisions]), share)
                changed = [d.prediction != v.prediction for d, v in zip(decisions, vanilla, strict=True)]
                kept = 1 - float(np.mean(sent & np.array(changed)))
                best = exits.get((policy, budget))
                if best is None or kept > best.search_agreement:
                    exits[policy, budget] = Choice(
                        policy, budget, layer, reader, lens, threshold, "exit", kept
                    )
    return choices + list(exits.values())


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--features", default="data/features/singles", help="names the labelled search questions"
    )
    parser.add_argument("--search-set", default="data/prepared/search.parquet")
    parser.add_argument(
        "--routers", default="models/routers/costs", help="the deep path: every candidate skipped"
    )
    parser.add_argument("--prepared", default="data/prepared", help="the test sets: <set>.parquet")
    parser.add_argument(
        "--results", default="data/eval/results.parquet", help="evaluate's rows on the test sets"
    )
    parser.add_argument("--sets", default="eval_id,eval_ood")
    parser.add_argument(
        "--blocks", default="1.0,1.2", help="blocks saved per search question, comma-separated"
    )
    parser.add_argument(
        "--exit-layers", default="9,16,20,24,27", help="where an exit may read, comma-separated"
    )
    parser.add_argument(
        "--versus",
        default="vanilla,drllm,best_static_1,random_deepest",
        help="evaluate's configurations to pair each choice with, where the set has them",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    routing = read_router_config(args.routers)
    candidates = sorted(routing.candidates[: TrainConfig.from_params(params["train"]).max_skips])
    budgets = [float(b) for b in args.blocks.split(",")]
    exit_layers = [int(m) for m in args.exit_layers.split(",")]
    if not all(0 < m < routing.num_layers for m in exit_layers):
        parser.error(f"--exit-layers {exit_layers} must lie within the model's {routing.num_layers} layers")
    results = pd.read_parquet(args.results)
    sets = args.sets.split(",")
    for name in sets:
        if not ((results["set"] == name) & (results["config"] == "vanilla")).any():
            parser.error(
                f"{args.results} holds no vanilla rows of set {name}: run `dvc repro evaluate` first"
            )
    by_id = {e.example_id: e for e in examples_from_frame(pd.read_parquet(args.search_set))}
    search = [by_id[i] for i in read_json(f"{args.features}/meta.json")["example_ids"]]

    loaded = load_model(ModelSpec.from_params(params["model"]))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks", {}))
    choices = search_choices(
        scorer, search, candidates, routing.num_layers, budgets, exit_layers, args.batch_size, args.seed
    )
    deep_path = [SKIP if i in candidates else EXECUTE for i in range(routing.num_layers)]
    summary, rows = [], []
    for set_name in sets:
        scored = results[results["set"] == set_name]
        vanilla = scored[scored["config"] == "vanilla"].set_index("example_id")
        prepared = examples_from_frame(pd.read_parquet(f"{args.prepared}/{set_name}.parquet"))
        test = [e for e in prepared if e.example_id in vanilla.index and e.choices]  # leads need choices
        ids = np.array([e.example_id for e in test])
        reads = {}  # (layer, reader) -> every test question's decision read there
        for layer in sorted({c.layer for c in choices if c.lens is not None}):
            batches = list(lens_batches(scorer, test, layer, args.batch_size))
            for choice in choices:
                if choice.layer == layer and choice.lens is not None and (layer, choice.reader) not in reads:
                    reads[layer, choice.reader] = lens_decisions(scorer, test, batches, choice.lens)
        sent = []  # per choice: the test questions it spends its budget on
        for choice in choices:
            if choice.lens is None:  # vanilla's own confidence, as evaluate scored it
                leads = np.array([lead(vanilla.at[e.example_id, "scores"]) for e in test])
            else:
                read = reads[choice.layer, choice.reader]
                leads = np.array([read[q].lead for q in range(len(test))])
            sent.append(leads > choice.threshold)
        to_deep = np.any([m for c, m in zip(choices, sent, strict=True) if c.takes == "deep"], axis=0)
        deep = [e for e, d in zip(test, to_deep, strict=True) if d]
        decisions = scorer.score(deep, torch.tensor([deep_path] * len(deep)), args.batch_size) if deep else []
        on_deep = pd.DataFrame(
            result_rows("deep", set_name, deep, decisions), columns=vanilla.reset_index().columns
        ).set_index("example_id")
        frames = [scored[scored["example_id"].isin(ids)]]
        for choice, mask in zip(choices, sent, strict=True):
            config = f"{choice.policy}_{choice.budget}"
            if choice.takes == "deep":
                taken = on_deep.loc[ids[mask]]
            else:
                read = reads[choice.layer, choice.reader]
                path = [EXECUTE if i < choice.layer else SKIP for i in range(routing.num_layers)]
                exits = [replace(read[q], path=tuple(path)) for q in np.flatnonzero(mask)]
                exited = [test[q] for q in np.flatnonzero(mask)]
                taken = pd.DataFrame(
                    result_rows(config, set_name, exited, exits), columns=vanilla.reset_index().columns
                ).set_index("example_id")
            frames.append(
                pd.concat([taken, vanilla.loc[ids[~mask]]]).reset_index().assign(config=config, set=set_name)
            )
        frame = pd.concat(frames)
        agreeing = with_agreement(frame)
        for choice, mask in zip(choices, sent, strict=True):
            config = f"{choice.policy}_{choice.budget}"
            mine = agreeing[agreeing["config"] == config]
            skipped = len(candidates) if choice.takes == "deep" else routing.num_layers - choice.layer
            summary.append(
                {
                    "set": set_name,
                    "policy": choice.policy,
                    "search_budget": choice.budget,
                    "layer": choice.layer,
                    "questions": len(test),
                    "questions_sent": int(mask.sum()),
                    "blocks_saved": float(mask.sum() * skipped / len(test)),
                    "accuracy": float(mine["correct"].mean()),
                    "agreement": float(mine["agrees"].mean()),
                }
            )
            for reference in [r for r in args.versus.split(",") if r in set(scored["config"])]:
                versus = compare(frame, config, reference, set_name)
                of = agreeing[agreeing["config"] == reference]
                rows.append(
                    {
                        "set": set_name,
                        "config": config,
                        "versus": reference,
                        "its_accuracy": float(of["correct"].mean()),
                        "accuracy_difference": versus["difference"],
                        "accuracy_ci": [round(float(versus[k]), 4) for k in ("ci_low", "ci_high")],
                        "accuracy_p": versus["mcnemar_p"],
                        "its_agreement": float(of["agrees"].mean()),
                        "agreement_difference": versus["agreement_difference"],
                        "agreement_ci": [
                            round(float(versus[f"agreement_{k}"]), 4) for k in ("ci_low", "ci_high")
                        ],
                        "agreement_p": versus["agreement_mcnemar_p"],
                    }
                )
    title = (
        f"Routing by the answer's confidence, every choice made on {len(search)} search questions (deep path "
        f"skipping {candidates}), on {', '.join(sets)} ({loaded.name}, {loaded.numerics['dtype']})"
    )
    print_table(title, summary)
    print_table("Each choice against configurations evaluate scored, paired", rows)
    write_json(
        f"tuned_lens-{loaded.name}",
        {
            "model": loaded.name,
            "numerics": loaded.numerics,
            "args": vars(args),
            "deep_path_skips": candidates,
            "summary": summary,
            "versus": rows,
        },
    )
    return summary, rows


if __name__ == "__main__":
    main()
