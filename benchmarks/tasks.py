"""Vanilla accuracy of a model on every default task: `python -m benchmarks.tasks`.

Builds the evaluation sets from params.yaml (`prepare`, `tasks`), scores each task on the default path and
prints accuracy with its 95% Wilson interval, the sample size and the examples scored per second.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import command_line, print_table, write_json
from drllm_core.engine import PathEngine
from drllm_core.io import read_yaml
from drllm_core.models import ModelSpec, load_model
from drllm_core.prepare import EVAL_SETS, build_sets
from drllm_core.stats import wilson_interval
from drllm_core.tasks.schema import examples_from_frame
from drllm_core.tasks.scorer import ExampleScorer


def main(argv=None):
    parser = command_line(__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    loaded = load_model(ModelSpec.from_params(params["model"]))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks"))
    frames, _ = build_sets(params["prepare"])
    rows = []
    for set_name in EVAL_SETS:
        for task, frame in frames[set_name].groupby("task", sort=False):
            examples = examples_from_frame(frame)
            start = time.perf_counter()
            decisions = scorer.score(examples, batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            correct = sum(d.correct for d in decisions)
            low, high = wilson_interval(correct, len(examples))
            settings = scorer.settings(task)
            rows.append(
                {
                    "set": set_name,
                    "task": task,
                    "scorer": settings.scorer if settings.scorer != "loglikelihood" else settings.metric,
                    "n": len(examples),
                    "accuracy": correct / len(examples),
                    "ci95_low": low,
                    "ci95_high": high,
                    "chance": 1 / len(examples[0].choices) if examples[0].choices else 0.0,
                    "examples_per_s": len(examples) / seconds,
                }
            )
    print(f"model {loaded.name}, dtype {loaded.dtype}, {torch.get_num_threads()} threads")
    print_table("Vanilla accuracy per task (default path)", rows)
    write_json("tasks", {"model": loaded.name, "numerics": loaded.numerics, "tasks": rows})


if __name__ == "__main__":
    main()
