"""Label sources compared: `python -m benchmarks.label_sources` (needs data/prepared from `dvc repro prepare`).

Which labels can a router learn from what it sees (the prompt's hidden states)? Each source searches the same
`--search` search questions, routers train on its labels, and they route `--held-out` other search questions
(never a test set) over a grid of knobs, scored together with vanilla and the static baselines chosen on the
labelled questions at 1, 2 and 3 skipped layers:

  mcts-margin     the MCTS search's shortest path right by a margin (the previous default; the paper's rule)
  mcts-faithful   the MCTS search's shortest path keeping the vanilla answer by a margin (reward: faithful)
  mcts-soft       every rewarded path of mcts-margin, as soft labels weighted towards shorter paths (PoLar)
  costs-1/costs-2 the skip cost of every single layer (singles), learned by a cost router at the decision layer
                  that skips up to one (costs-1) or two (costs-2) of its candidates below a threshold

Reported per source: label agreement between two search seeds (per layer; singles is deterministic), the
routers' held-out metric against its trivial predictor, and accuracy and agreement with vanilla against
blocks saved on the held-out questions. Searches are checkpointed under benchmarks/results/label_sources/, so
a rerun resumes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import RESULTS, command_line, print_table, write_json
from drllm_core.baselines import block_influence, lowest_influence_path, static_paths
from drllm_core.checkpoint import Checkpoint
from drllm_core.comparison import summarize
from drllm_core.engine import PathEngine
from drllm_core.evaluation import Configuration, EvaluationRunner
from drllm_core.features import build_features
from drllm_core.io import read_yaml
from drllm_core.labels import scored_paths
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.paths import LayerPath, PathConstraints
from drllm_core.prepare import sample
from drllm_core.routing import RouterConfig, Routing, decision_layer
from drllm_core.runtime import Runtime
from drllm_core.search_runner import ExampleSearcher, SearchSettings, search_examples
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.training import TrainConfig, train_cost_router, train_routers

SOURCES = {  # name: (strategy, reward, label rule)
    "mcts-margin": ("mcts", "margin", "shortest"),
    "mcts-faithful": ("mcts", "faithful", "shortest"),
    "mcts-soft": ("mcts", "margin", "soft"),
    "costs": ("singles", "margin", "skip_cost"),
}


def searched(loaded, params, examples, strategy, reward, rule, seed, folder: Path) -> pd.DataFrame:
    """The labelled records of one search (checkpointed: a rule of the same search relabels it)."""
    path_rule = "shortest" if rule == "skip_cost" else rule  # singles labels skip costs whatever the rule
    search = {**params["search"], "reward": reward, "seed": seed, "label_rule": path_rule}
    settings = SearchSettings.from_params(search, strategy)
    searcher = ExampleSearcher(loaded, params.get("tasks") or {}, settings.search, settings.reward)
    with Checkpoint(folder / f"{strategy}-{reward}-seed{seed}.jsonl") as checkpoint:
        return search_examples(examples, lambda: searcher, Runtime(), checkpoint, settings.rule)


def layer_agreement(first: pd.DataFrame, second: pd.DataFrame, column: str = "labels") -> float:
    """Share of equal per-layer labels between two seeds, over examples kept by both."""
    both = first[first["kept"]].merge(second[second["kept"]], on="example_id", suffixes=("_a", "_b"))
    if both.empty:
        return float("nan")
    values = [np.asarray(a) for a in both[f"{column}_a"]], [np.asarray(b) for b in both[f"{column}_b"]]
    if column == "soft_labels":
        return float(np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(*values, strict=True)]))
    return float(np.mean([np.mean(a == b) for a, b in zip(*values, strict=True)]))


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--search", type=int, default=200, help="search questions labelled by every source")
    parser.add_argument("--held-out", type=int, default=200, help="other search questions the routers route")
    parser.add_argument("--knobs", default="-0.2,0,0.14,0.3", help="class routers' knob grid")
    parser.add_argument("--cost-knobs", default="-1,-0.5,0,0.5", help="cost routers' knob grid")
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    loaded = load_model(ModelSpec.from_params(params["model"]))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks") or {})
    pool = sample(examples_from_frame(pd.read_parquet("data/prepared/search.parquet")), None, 0)
    labelled_set, held_out = pool[: args.search], pool[args.search : args.search + args.held_out]
    by_id = {e.example_id: e for e in labelled_set}
    folder = RESULTS / "label_sources"
    folder.mkdir(parents=True, exist_ok=True)
    train = TrainConfig.from_params(params["train"])
    constraints = PathConstraints.from_params(params["search"])
    layers = loaded.num_layers
    routing = Routing(constraints.max_skip_run, constraints.max_blocks, params.get("tasks") or {})
    rows, label_rows, routers = [], [], {}
    for name, (strategy, reward, rule) in SOURCES.items():
        records = searched(loaded, params, labelled_set, strategy, reward, rule, 0, folder)
        again = (
            searched(loaded, params, labelled_set, strategy, reward, rule, 1, folder)
            if strategy == "mcts"
            else records
        )
        kept = records[records["kept"]]
        examples = [by_id[i] for i in kept["example_id"]]
        column = "costs" if rule == "skip_cost" else "soft_labels" if rule == "soft" else "labels"
        features, window_mask = build_features(
            scorer, examples, torch.tensor([list(v) for v in kept["labels"]]), train.windows
        )
        config = RouterConfig(
            layers,
            loaded.model.config.hidden_size,
            train.bottleneck,
            train.windows,
            base_fingerprint=weights_fingerprint(loaded.model),
            routing=routing,
        )
        if rule == "skip_cost":
            costs = torch.tensor([list(v) for v in kept["costs"]], dtype=torch.float64)
            keeps = torch.tensor([list(v) for v in kept["keeps"]], dtype=torch.float64)
            singles = records
            for skips in (1, 2):
                cost_config = replace(
                    config,
                    kind="costs",
                    decision_layer=decision_layer(train.decision_depth, layers),
                    routing=replace(routing, max_skips=skips),
                )
                result = train_cost_router(
                    features, window_mask, costs, keeps, cost_config, replace(train, max_skips=skips)
                )
                routers[f"costs-{skips}"] = (result.routers, args.cost_knobs)
                label_rows.append(
                    {
                        "source": f"costs-{skips}",
                        "kept": len(kept),
                        "seed_agreement": 1.0,
                        **{
                            k: result.validation[k]
                            for k in ("val_changed", "static_changed", "oracle_changed")
                        },
                    }
                )
        else:
            targets = (
                torch.tensor([list(v) for v in kept[column]]).float()
                if rule == "soft"
                else torch.tensor([list(v) for v in kept["labels"]])
            )
            result = train_routers(features, window_mask, targets, config, train)
            routers[name] = (result.routers, args.knobs)
            label_rows.append(
                {
                    "source": name,
                    "kept": len(kept),
                    "seed_agreement": layer_agreement(records, again, column),
                    "val_macro_f1": result.validation["macro_f1"],
                    "majority_macro_f1": result.baselines["majority"]["macro_f1"],
                }
            )
        print(label_rows[-1], flush=True)
    routed_dir = folder / "routers"
    configs = [Configuration.static("vanilla", ["held_out"], LayerPath.default(layers))]
    for name, (router_set, knobs) in routers.items():
        router_set.save(routed_dir / name)
        configs += [
            Configuration.routed(f"{name}@{float(k):+g}", ["held_out"], str(routed_dir / name), float(k))
            for k in knobs.split(",")
        ]
    # the static yardstick: chosen on every labelled question, its first step from the singles search
    static, _ = static_paths(scorer, labelled_set, (1, 2, 3), constraints, known=scored_paths(singles))
    influence = block_influence(scorer, labelled_set)
    static["shortgpt_bi"] = {b: lowest_influence_path(influence, b) for b in (1, 2, 3)}
    configs += [
        Configuration.static(f"{n}_{b}", ["held_out"], p)
        for n, paths in static.items()
        for b, p in paths.items()
    ]
    runner = EvaluationRunner(
        loaded, scorer, {"held_out": held_out}, {"held_out": "h"}, folder / "evaluation", "bench", 16
    )
    results = pd.DataFrame([r for group in runner.run_many(configs).values() for r in group])
    summary = summarize(results, layers)
    for row in summary[summary["task"] == "all"].itertuples():
        rows.append(
            {
                "variant": row.config,
                "accuracy": row.accuracy,
                "agreement": row.agreement,
                "blocks_saved": row.blocks_saved,
                "distinct_paths": row.distinct_paths,
            }
        )
    print_table(f"Labels per source ({len(labelled_set)} search questions, {loaded.name})", label_rows)
    print_table(
        f"Routing on {len(held_out)} held-out search questions: accuracy and agreement with vanilla at blocks saved",
        rows,
    )
    write_json(
        "label_sources", {"model": loaded.name, "args": vars(args), "labels": label_rows, "routing": rows}
    )


if __name__ == "__main__":
    main()
