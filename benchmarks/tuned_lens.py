"""Does the tuned lens's choice of deep-skip questions hold on test questions? `python -m benchmarks.tuned_lens`
(needs an evaluated pipeline, `dvc repro evaluate`; on every ARC test question: `--test-set` and `--results`
of the full-test workspace, presets/full-test.yaml).

benchmarks.deep_skip finds, in cross-validation over the labelled search questions, that a tuned lens entering
the deep path's first skipped layer reads how sure vanilla is of its answer nearly as well as the full forward,
and so which questions keep their answer when every candidate layer is skipped. Here everything is chosen on the
search questions: the lens is fitted on all of them, and the threshold on its lead is the quantile that sends
`--blocks` / (skipped layers) of them down the deep path, taken on out-of-fold leads (as a router is calibrated
on questions it did not learn from). Then, on the test questions of evaluate's `--results` (`--set`), those whose
lead passes the threshold take the deep path and the others vanilla's answer: `tuned_lens`, paired against every
configuration evaluate scored there, in accuracy and in agreement with vanilla (McNemar).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from benchmarks.common import command_line, print_table, write_json
from benchmarks.deep_skip import fit_lens, five_folds, lens_batches, lens_leads, tuned_lens_leads
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
    parser.add_argument("--test-set", default="data/prepared/eval_id.parquet")
    parser.add_argument(
        "--results", default="data/eval/results.parquet", help="evaluate's rows on the test set"
    )
    parser.add_argument("--set", default="eval_id")
    parser.add_argument("--blocks", type=float, default=1.2, help="blocks saved per search question")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = read_yaml(args.params)
    routing = read_router_config(args.routers)
    candidates = sorted(routing.candidates[: TrainConfig.from_params(params["train"]).max_skips])
    results = pd.read_parquet(args.results)
    results = results[results["set"] == args.set]
    if results.empty or "vanilla" not in set(results["config"]):
        parser.error(
            f"{args.results} holds no vanilla rows of set {args.set}: run `dvc repro evaluate` first"
        )
    by_id = {e.example_id: e for e in examples_from_frame(pd.read_parquet(args.search_set))}
    search = [by_id[i] for i in read_json(f"{args.features}/meta.json")["example_ids"]]
    vanilla = results[results["config"] == "vanilla"].set_index("example_id")
    test = [e for e in examples_from_frame(pd.read_parquet(args.test_set)) if e.example_id in vanilla.index]
    test = [e for e in test if e.choices]  # leads need choice scores

    loaded = load_model(ModelSpec.from_params(params["model"]))
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, params.get("tasks", {}))
    layer, share = candidates[0], args.blocks / len(candidates)
    batches = list(lens_batches(scorer, search, layer, args.batch_size))
    held_out = tuned_lens_leads(scorer, search, batches, five_folds(len(search), args.seed))
    threshold = float(np.quantile(held_out, 1 - share))
    fitted = fit_lens(batches, set(range(len(search))))  # every search question, once the threshold is set
    leads = lens_leads(scorer, test, lens_batches(scorer, test, layer, args.batch_size), fitted)
    deep = np.array([leads[i] > threshold for i in range(len(test))])

    path = [SKIP if i in candidates else EXECUTE for i in range(routing.num_layers)]
    chosen = [e for e, d in zip(test, deep, strict=True) if d]
    decisions = scorer.score(chosen, torch.tensor([path] * len(chosen)), args.batch_size) if chosen else []
    lens_rows = pd.concat(
        [
            pd.DataFrame(result_rows("tuned_lens", args.set, chosen, decisions)),
            vanilla.loc[[e.example_id for e, d in zip(test, deep, strict=True) if not d]]
            .reset_index()
            .assign(config="tuned_lens"),
        ]
    )
    frame = pd.concat([results[results["example_id"].isin(lens_rows["example_id"])], lens_rows])
    scored = with_agreement(frame)
    mine = scored[scored["config"] == "tuned_lens"]
    summary = {
        "questions": len(test),
        "questions_deep": int(deep.sum()),
        "blocks_saved": float(deep.sum() * len(candidates) / len(test)),
        "accuracy": float(mine["correct"].mean()),
        "agreement": float(mine["agrees"].mean()),
        "threshold": threshold,
    }
    rows = []
    for reference in dict.fromkeys(results["config"]):
        versus = compare(frame, "tuned_lens", reference, args.set)
        of = scored[scored["config"] == reference]
        rows.append(
            {
                "versus": reference,
                "its_accuracy": float(of["correct"].mean()),
                "accuracy_difference": versus["difference"],
                "accuracy_ci": [round(float(versus[k]), 4) for k in ("ci_low", "ci_high")],
                "accuracy_p": versus["mcnemar_p"],
                "its_agreement": float(of["agrees"].mean()),
                "agreement_difference": versus["agreement_difference"],
                "agreement_ci": [round(float(versus[f"agreement_{k}"]), 4) for k in ("ci_low", "ci_high")],
                "agreement_p": versus["agreement_mcnemar_p"],
            }
        )
    title = (
        f"Tuned lens entering layer {layer} (fitted on {len(search)} search questions), deep path skipping "
        f"{candidates}, on {len(test)} questions of {args.set} ({loaded.name}, {loaded.numerics['dtype']})"
    )
    print_table(title, [summary])
    print_table("tuned_lens against each configuration evaluate scored, paired", rows)
    write_json(
        "tuned_lens",
        {
            "model": loaded.name,
            "numerics": loaded.numerics,
            "args": vars(args),
            "deep_path_skips": candidates,
            "summary": [summary],  # one row: a table on docs/benchmarks.md
            "versus": rows,
        },
    )
    return summary, rows


if __name__ == "__main__":
    main()
