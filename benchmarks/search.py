"""Search strategies side by side: `python -m benchmarks.search`.

On the first N default search examples (prepared by `dvc repro prepare`), at equal budgets, `mcts` vs `chain`
vs `random` (and `mcts` with the paper's early stops), paired on the same examples and two seeds: share of
examples with a kept path, W->C rate, mean blocks saved by kept paths, label agreement across the two seeds
(whole paths, and per layer), block evaluations per simulation (a naive search spends L) and wall time.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from benchmarks.common import command_line, print_table, write_json
from drllm_core.io import read_yaml
from drllm_core.labels import LabelRule, labelled
from drllm_core.models import ModelSpec, load_model
from drllm_core.search import SearchConfig
from drllm_core.search_runner import ExampleSearcher, RewardConfig
from drllm_core.tasks.schema import examples_from_frame


def run_variant(loaded, tasks, examples, config: SearchConfig) -> tuple[pd.DataFrame, float]:
    searcher = ExampleSearcher(loaded, tasks, config, RewardConfig())
    start = time.perf_counter()
    records = pd.DataFrame([labelled(searcher(example), LabelRule("shortest")) for example in examples])
    return records, time.perf_counter() - start


def agreement(first: pd.DataFrame, second: pd.DataFrame) -> tuple[float, float]:
    """Among examples kept under both seeds: share with identical paths, and share of equal layer labels."""
    both = first[first["kept"]].merge(second[second["kept"]], on="example_id", suffixes=("_a", "_b"))
    if both.empty:
        return float("nan"), float("nan")
    same_path = float(
        np.mean([list(a) == list(b) for a, b in zip(both["labels_a"], both["labels_b"], strict=True)])
    )
    same_layer = float(
        np.mean([np.mean(np.equal(a, b)) for a, b in zip(both["labels_a"], both["labels_b"], strict=True)])
    )
    return same_path, same_layer


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--examples", type=int, default=50)
    parser.add_argument("--budgets", default="10,25,50")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    loaded = load_model(ModelSpec.from_params(params["model"]))
    examples = examples_from_frame(pd.read_parquet("data/prepared/search.parquet"))[: args.examples]
    search_params = {k: v for k, v in params["search"].items() if k in SearchConfig.__dataclass_fields__}
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [(s, False) for s in ("mcts", "chain", "random")] + [("mcts", True)]
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        for strategy, early_stop in variants:
            if early_stop and budget != max(int(b) for b in args.budgets.split(",")):
                continue
            runs = []
            for seed in seeds:
                config = SearchConfig(
                    **{
                        **search_params,
                        "strategy": strategy,
                        "simulations": budget,
                        "early_stop": early_stop,
                        "seed": seed,
                    }
                )
                runs.append(run_variant(loaded, params.get("tasks"), examples, config))
            records, seconds = runs[0]
            kept = records[records["kept"]]
            same_path, same_layer = (
                agreement(runs[0][0], runs[1][0]) if len(runs) > 1 else (float("nan"),) * 2
            )
            rows.append(
                {
                    "budget": budget,
                    "strategy": strategy + (" +early stop" if early_stop else ""),
                    "kept_share": len(kept) / len(records),
                    "w2c_share": float(records["wrong_to_correct"].mean()),
                    "blocks_saved_kept": float(kept["blocks_saved"].mean()),
                    "same_path_2_seeds": same_path,
                    "same_layer_label_2_seeds": same_layer,
                    "layer_evals_per_sim": float(
                        records["layer_evaluations"].sum() / records["simulations"].sum()
                    ),
                    "seconds_per_example": seconds / len(records),
                }
            )
            print(rows[-1], flush=True)
    print(
        f"\nmodel {loaded.name} ({loaded.num_layers} layers), {len(examples)} search examples, seeds {seeds}"
    )
    print_table("Search strategies at equal budgets (first seed; agreement between the two seeds)", rows)
    write_json(
        "search",
        {"model": loaded.name, "num_layers": loaded.num_layers, "examples": len(examples), "rows": rows},
    )


if __name__ == "__main__":
    main()
