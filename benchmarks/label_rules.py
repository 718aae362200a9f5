"""Label rules compared: `python -m benchmarks.label_rules` (needs data/paths/mcts from `dvc repro`).

For each label rule (drllm_core.labels) the MCTS search's scored paths are relabelled (no new search), router
inputs are cached along the new labels, routers train with the params.yaml settings, and they route the
held-out search questions that calibrate the knob, over a grid of knobs: accuracy against blocks saved.
Static pruning (ShortGPT Block Influence, and the greedy best static path, both chosen on search questions)
at 1..3 skipped layers runs on the same questions as the yardstick: a rule is worth having when its routers
beat static pruning at equal blocks saved.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from benchmarks.common import print_table, write_json
from drllm_core.engine import PathEngine
from drllm_core.evaluation import (
    accuracy_and_blocks_saved,
    best_static_path,
    block_influence,
    held_out_search_questions,
    lowest_influence_path,
)
from drllm_core.inference import RoutedModel
from drllm_core.io import read_yaml
from drllm_core.labels import LabelRule, labelled
from drllm_core.models import ModelSpec, load_model
from drllm_core.paths import LayerPath, PathConstraints
from drllm_core.prepare import sample
from drllm_core.routers import RouterConfig
from drllm_core.tasks.evaluator import ExampleScorer, examples_from_frame
from drllm_core.training import TrainConfig, build_features, train_routers


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--paths", default="data/paths/mcts/paths.parquet")
    parser.add_argument(
        "--rules",
        default="shortest,consensus:0.6,consensus:0.7",
        help="rule[:consensus_share], comma-separated",
    )
    parser.add_argument("--knobs", default="-0.3,-0.2,-0.1,0,0.1,0.2,0.23")
    parser.add_argument("--questions", type=int, default=300, help="held-out search questions")
    parser.add_argument("--static-skips", type=int, default=3)
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    train = TrainConfig.from_params(params["train"])
    search_params = params["search"]
    constraints = PathConstraints.from_params(search_params)
    loaded = load_model(ModelSpec.from_params(params["model"]))
    layers = loaded.num_layers
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks"))
    search_set = examples_from_frame(pd.read_parquet("data/prepared/search.parquet"))
    by_id = {e.example_id: e for e in search_set}
    held_out = held_out_search_questions(search_set, search_params, args.questions)
    records = pd.read_parquet(args.paths).to_dict("records")

    def static(name: str, path: LayerPath) -> dict:
        decisions = scorer.score(held_out, torch.tensor([path.counts] * len(held_out)))
        return {
            "variant": name,
            "knob": "",
            "label_skip_share": "",
            **accuracy_and_blocks_saved(decisions, layers),
        }

    rows = [static("vanilla", LayerPath.default(layers))]
    chosen = sample(search_set, int(params["evaluate"]["static_examples"]), int(params["evaluate"]["seed"]))
    influence = block_influence(scorer, chosen)
    for skips in range(1, args.static_skips + 1):
        rows.append(static(f"shortgpt_bi {skips}", lowest_influence_path(influence, skips)))
        rows.append(static(f"best_static {skips}", best_static_path(scorer, chosen, skips, constraints)[0]))
    for spec in args.rules.split(","):
        name, _, share = spec.partition(":")
        rule = LabelRule(name, *([float(share)] if share else []))  # else the default share
        kept = [row for row in (labelled(r, rule) for r in records) if row["kept"]]
        labels = torch.tensor([row["labels"] for row in kept])
        examples = [by_id[row["example_id"]] for row in kept]
        features, window_mask = build_features(scorer, examples, labels, train.windows)
        router_config = RouterConfig(layers, loaded.model.config.hidden_size, train.bottleneck, train.windows)
        result = train_routers(features, window_mask, labels, router_config, train)
        routed = RoutedModel(loaded, result.routers, max_skip_run=constraints.max_skip_run)
        for knob in (float(k) for k in args.knobs.split(",")):
            routed.knob = knob
            rows.append(
                {
                    "variant": f"routers {spec}",
                    "knob": knob,
                    "label_skip_share": float((labels == 0).float().mean()),
                    **accuracy_and_blocks_saved(routed.score(scorer, held_out), layers),
                }
            )
            print(rows[-1], flush=True)
    print_table(
        f"Label rules: routers vs static pruning on {len(held_out)} held-out search questions ({loaded.name})",
        rows,
    )
    write_json("label_rules", {"model": loaded.name, "questions": len(held_out), "rows": rows})


if __name__ == "__main__":
    main()
