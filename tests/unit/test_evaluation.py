"""Evaluation: the static baselines, the runner and its summaries, and knob calibration, on a tiny model."""

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch

from drllm_core import io
from drllm_core.baselines import (
    block_influence,
    deepest_path,
    lowest_influence_path,
    random_path,
    random_questions,
    static_paths,
)
from drllm_core.calibration import calibrate_knob, choose_knob_from, held_out_search_questions
from drllm_core.comparison import compare, summarize
from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError, DrllmError
from drllm_core.evaluation import (
    Configuration,
    EvaluationRunner,
    check_prompt_format,
    headline,
    random_deepest_rows,
    result_rows,
)
from drllm_core.generation_check import _common_prefix, generation_check, speed_check
from drllm_core.inference import RoutedModel
from drllm_core.models import weights_fingerprint
from drllm_core.paths import LayerPath, PathConstraints
from drllm_core.prepare import sample
from drllm_core.report import DODGE, markdown_table, sideways, summary_markdown
from drllm_core.rewards import PathRewards
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, Routing, read_router_config, routers_hash
from drllm_core.search_runner import SearchSettings
from drllm_core.stats import choice_kl, paired_comparison, wilson_interval
from drllm_core.tasks.registry import get_task
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer
from tests.conftest import run_stage, tiny_cost_routers, tiny_loaded

EXAMPLES = [
    Example(f"t/{i}", "t", f"Which word comes {i} times?", ["one", "two", "three"], i % 3) for i in range(6)
]


def _scorer():
    loaded = tiny_loaded()
    return ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})


def test_block_influence_and_lowest_influence_pruning():
    influence = block_influence(_scorer(), EXAMPLES[:3], batch_size=2)
    assert len(influence) == 6 and all(0 <= v <= 2 for v in influence)
    path = lowest_influence_path([0.5, 0.1, 0.9, 0.05, 0.3, 0.7], 2)
    assert path.counts == (1, 0, 1, 0, 1, 1)


def test_static_paths_are_greedy_valid_and_nested_over_budgets():
    constraints = PathConstraints()
    paths, trace = static_paths(_scorer(), EXAMPLES, [1, 3], constraints, keep=4)
    assert set(paths) == {"best_static", "faithful_static"} and all(set(p) == {1, 3} for p in paths.values())
    for budgets in paths.values():
        assert budgets[1].blocks == 5 and budgets[3].blocks == 3 and budgets[3].is_valid(6, constraints)
        skipped_first = budgets[1].counts.index(0)
        assert budgets[3].counts[skipped_first] == 0  # greedy: the first skip stays
    assert len(trace) == 6 and all(step["examples"] == 6 for step in trace)
    faithful_first = next(t for t in trace if t["baseline"] == "faithful_static" and t["skips"] == 1)
    scorer = _scorer()
    kept = sum(
        PathRewards(scorer, e, reward="faithful")([paths["faithful_static"][1]])[0].reward for e in EXAMPLES
    )
    assert faithful_first["kept"] == kept  # the faithful path keeps that many vanilla answers


def test_static_paths_reuse_what_a_search_scored_and_choose_the_same():
    scorer, constraints = _scorer(), PathConstraints()
    searched = {}  # the single skips a singles search scored, with their choice scores
    for example in EXAMPLES:
        rewards = PathRewards(scorer, example)
        rewards([LayerPath.default(6), *(LayerPath.default(6).with_count(layer, 0) for layer in range(6))])
        searched[example.example_id] = {path: outcome.scores for path, outcome in rewards.memo.items()}
    rows = scorer.engine.counter.rows
    fresh, fresh_trace = static_paths(scorer, EXAMPLES, [1, 2], constraints, keep=3)
    fresh_rows, rows = scorer.engine.counter.rows - rows, scorer.engine.counter.rows
    seeded, seeded_trace = static_paths(scorer, EXAMPLES, [1, 2], constraints, keep=3, known=searched)
    assert seeded == fresh and [t["kept"] for t in seeded_trace] == [t["kept"] for t in fresh_trace]
    assert seeded_trace[0]["block_rows"] == 0  # the first step is the search's single skips: no forward
    assert 0 < scorer.engine.counter.rows - rows < fresh_rows


def test_a_random_path_skips_the_asked_number_of_layers_the_same_for_a_question_whatever_the_order():
    paths = [random_path(f"q{i}", n, 6, PathConstraints(), seed=0) for i, n in enumerate([0, 1, 2, 3, -1])]
    assert [p.blocks_saved for p in paths] == [0, 1, 2, 3, 0]
    assert all(p.is_valid(6, PathConstraints()) for p in paths)
    assert random_path("q3", 3, 6, PathConstraints(), seed=0) == paths[3]
    drawn = {random_path(f"q{i}", 2, 6, PathConstraints(), seed=0) for i in range(20)}
    assert len(drawn) > 3  # questions draw their own paths
    assert drawn != {random_path(f"q{i}", 2, 6, PathConstraints(), seed=1) for i in range(20)}
    with pytest.raises(
        DrllmError, match="no valid path skips 5 of 6 layers"
    ):  # never the default path instead
        random_path("q0", 5, 6, PathConstraints(max_skip_run=1), seed=0)


def test_summaries_and_paired_comparison():
    scorer = _scorer()
    decisions = scorer.score(EXAMPLES)
    frame = pd.DataFrame(result_rows("vanilla", "eval_id", EXAMPLES, decisions))
    counts = torch.tensor([[1, 0, 1, 1, 1, 1]] * len(EXAMPLES))
    other = pd.DataFrame(result_rows("static", "eval_id", EXAMPLES, scorer.score(EXAMPLES, counts)))
    both = pd.concat([frame, other])
    summary = summarize(both, 6)
    row = summary[(summary["config"] == "static") & (summary["task"] == "all")].iloc[0]
    assert row["blocks_per_token"] == 5 and row["saved_pct"] == pytest.approx(100 / 6) and row["n"] == 6
    comparison = compare(both, "static", "vanilla", "eval_id")
    assert comparison["n"] == 6 and -1 <= comparison["difference"] <= 1


def test_paired_statistics():
    same = paired_comparison([True, False] * 50, [True, False] * 50)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and not same["significant"]
    better = paired_comparison([True] * 100, [True] * 80 + [False] * 20)
    assert better["difference"] == pytest.approx(0.2) and better["significant"] and better["ci_low"] > 0.1
    low, high = wilson_interval(0, 10)
    assert low == 0 and 0.2 < high < 0.35


def test_choice_kl_is_the_kl_of_the_softmaxed_scores_and_finite_when_a_choice_is_ruled_out():
    p, q = torch.softmax(torch.tensor([-1.0, -2.0]), 0), torch.softmax(torch.tensor([-1.0, -1.5]), 0)
    assert choice_kl([-1.0, -2.0], [-1.0, -1.5]) == pytest.approx(float((p * (p / q).log()).sum()))
    assert choice_kl([0.5, -3.0, 1.0], [10.5, 7.0, 11.0]) == 0  # scores shifted alike: the same distribution
    ruled_out = choice_kl([0.0, 0.0], [0.0, -1e6])
    assert ruled_out == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12))  # not infinity
    assert math.isnan(choice_kl([], [-1.0])) and math.isnan(choice_kl([-1.0], []))


def test_knob_choice_meets_the_compute_target_with_the_least_skipping():
    table = [
        {"knob": 0.0, "accuracy": 0.387, "blocks_saved": 3.63},
        {"knob": 0.1, "accuracy": 0.380, "blocks_saved": 1.51},
        {"knob": 0.12, "accuracy": 0.383, "blocks_saved": 1.11},
        {"knob": 0.14, "accuracy": 0.403, "blocks_saved": 0.70},
    ]
    assert choose_knob_from(table, 1.0) == 0.12  # not 0.0, the most accurate by a noisy 0.4 points
    assert choose_knob_from(table, 0.5) == 0.14
    assert choose_knob_from(table, 5.0) == 0.0  # nothing saves enough: the one saving the most


def test_the_knob_is_calibrated_on_search_questions_the_search_did_not_use():
    questions = [Example(f"arc_easy/q{i}", "arc_easy", f"q{i}?", ["a", "b"], 0).check() for i in range(10)]

    def held_out(search):
        return [
            e.example_id
            for e in held_out_search_questions(questions, SearchSettings.from_params(search, "singles"), 10)
        ]

    chosen = held_out({"max_examples": 4, "seed": 0})
    searched = {e.example_id for e in sample(questions, 4, 0)}  # what the search stage searches
    assert len(chosen) == 6 and not searched & set(chosen)
    assert held_out({"max_examples": "4", "seed": 0.0}) == chosen  # numbers read as the search reads them
    assert held_out({"max_examples": None}) == []


def test_knob_calibration_scores_every_grid_value(tmp_path):
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    RouterSet(RouterConfig(6, 64, 8, 4, base_fingerprint=weights_fingerprint(loaded.model))).save(
        tmp_path / "r"
    )
    runner = EvaluationRunner(
        loaded, scorer, {"calibration": EXAMPLES}, {"calibration": "h"}, tmp_path, "c", 4
    )
    knob, table = calibrate_knob(runner, str(tmp_path / "r"), [-1.0, 0.5], min_blocks_saved=1.0)
    assert [row["knob"] for row in table] == [-1.0, 0.5]
    assert table[1]["blocks_saved"] == 0.0 and table[1]["agreement"] == 1.0  # 0.5 never skips
    assert table[0]["blocks_saved"] > 1.0  # -1 skips all it may
    assert knob == -1.0  # the only knob saving a block


@pytest.mark.parametrize("tasks", [{}, {"defaults": {"chat_template": True}}], ids=["plain", "chat"])
def test_configurations_scored_together_resume_from_vanilla_and_equal_scoring_each_alone(tmp_path, tasks):
    """Chat prompts run after the template's shared opening: the routers read it in both ways of scoring."""
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, tasks)
    routers = tiny_cost_routers(loaded, [0.0, -1.0, -3.0])
    with torch.no_grad():
        routers.cost.weight.normal_()
        routers.cost.projection.normal_()
    routers.save(tmp_path / "costs")
    configs = [
        Configuration.static("vanilla", ["eval_id"], LayerPath.default(6)),
        Configuration.static("skip_4", ["eval_id"], LayerPath((1, 1, 1, 1, 0, 1))),
        Configuration.static("skip_and_repeat", ["eval_id"], LayerPath((1, 1, 0, 1, 1, 2))),
        Configuration.routed("costs", ["eval_id"], str(tmp_path / "costs"), -0.2),
    ]
    configs.append(Configuration.random_like("random", ["eval_id"], configs[-1], PathConstraints(), 0))
    together = EvaluationRunner(
        loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path / "a", "c", 4
    )
    alone = EvaluationRunner(loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path / "b", "c", 4)
    shared = together.run_many(configs)
    random = [
        random_path(e.example_id, 6 - r["blocks"], 6, PathConstraints(), 0)
        for e, r in zip(EXAMPLES, shared["costs"], strict=True)
    ]
    references = {
        "costs": alone.routed(configs[3].routers, configs[3].knob).score(scorer, EXAMPLES, 4),
        "random": scorer.score(EXAMPLES, torch.tensor([p.counts for p in random]), 4),
    }
    for config in configs:
        reference = (
            result_rows(config.name, "eval_id", EXAMPLES, references[config.name])
            if config.name in references
            else alone.run_many([config])[config.name]
        )
        assert [r["path"] for r in shared[config.name]] == [r["path"] for r in reference], config.name
        assert [r["prediction"] for r in shared[config.name]] == [r["prediction"] for r in reference], (
            config.name
        )
        torch.testing.assert_close(
            torch.tensor([r["scores"] for r in shared[config.name]]),
            torch.tensor([r["scores"] for r in reference]),
            rtol=1e-4,
            atol=1e-4,
        )
    assert len({tuple(r["path"]) for r in shared["costs"]}) >= 1 and all(
        r["blocks"] < 6 for r in shared["costs"]
    )


def test_random_questions_and_the_deepest_path_are_drawn_the_same_whatever_the_order():
    ids = [f"q{i}" for i in range(40)]
    chosen = random_questions(ids, 10, seed=0)
    assert len(chosen) == 10 and chosen <= set(ids)
    assert random_questions(ids[::-1], 10, seed=0) == chosen
    assert random_questions(ids, 11, seed=0) > chosen  # one more question, the others kept
    assert random_questions(ids, 10, seed=1) != chosen
    assert random_questions(ids, 0, seed=0) == set()
    deep, shallow, other = (LayerPath((1, 0, 0, 1)), LayerPath((1, 0, 1, 1)), LayerPath((0, 1, 0, 1)))
    assert deepest_path([shallow, deep, other, other, LayerPath.default(4)]) == other  # ties: most frequent
    assert deepest_path([shallow, deep, other]) == deep  # then the first


def test_random_deepest_spends_drllms_blocks_on_its_deepest_path_for_random_questions(tmp_path):
    """Dr.LLM's rows made by hand (per-question paths, really scored): 9 blocks saved, the deepest path
    (3 skips, twice) on 3 random questions, vanilla's rows on the others."""
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    runner = EvaluationRunner(loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path / "c", "c", 4)
    vanilla = runner.run(Configuration.static("vanilla", ["eval_id"], LayerPath.default(6)))
    paths = [
        (1, 0, 0, 0, 1, 1),
        (1, 0, 1, 1, 1, 1),
        (1,) * 6,
        (1, 1, 0, 1, 0, 1),
        (1,) * 6,
        (1, 0, 0, 0, 1, 1),
    ]
    drllm = result_rows("drllm", "eval_id", EXAMPLES, scorer.score(EXAMPLES, torch.tensor(paths), 4))
    results = pd.DataFrame(vanilla + drllm)
    rows = random_deepest_rows(runner, results, "eval_id", seed=0)
    chosen = random_questions([e.example_id for e in EXAMPLES], 3, seed=0)
    deep = [e for e in EXAMPLES if e.example_id in chosen]
    expected = dict(
        zip(
            (e.example_id for e in deep),
            result_rows(
                "random_deepest", "eval_id", deep, scorer.score(deep, torch.tensor([paths[0]] * 3), 4)
            ),
            strict=True,
        )
    )
    assert rows == [expected.get(r["example_id"], {**r, "config": "random_deepest"}) for r in vanilla]
    assert sum(6 - r["blocks"] for r in rows) == 9
    assert random_deepest_rows(runner, results, "eval_id", seed=0) == rows  # checkpointed
    none_saved = pd.DataFrame(vanilla + [{**r, "config": "drllm"} for r in vanilla])
    assert random_deepest_rows(runner, none_saved, "eval_id", seed=0) == [
        {**r, "config": "random_deepest"} for r in vanilla
    ]


def test_random_skips_like_a_class_router_save_its_blocks_per_question_and_must_come_after_it(tmp_path):
    """Class routers decide layer by layer: the random paths are drawn from their checkpointed results."""
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    torch.manual_seed(0)
    routers = RouterSet(RouterConfig(6, 64, 8, 4, base_fingerprint=weights_fingerprint(loaded.model)))
    with torch.no_grad():
        for router in routers.routers:
            router.out.weight.normal_()
        routers.input_scale.fill_(100.0)  # the tiny model's states differ little between questions
    routers.save(tmp_path / "r")
    drllm = Configuration.routed("drllm", ["eval_id"], str(tmp_path / "r"), 0.0)
    random = Configuration.random_like("random_skip", ["eval_id"], drllm, PathConstraints(), seed=0)
    runner = EvaluationRunner(loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path / "c", "c", 4)
    with pytest.raises(DrllmError, match="put 'drllm' earlier in the list"):
        runner.run_many([random, drllm])
    rows = runner.run_many([drllm, random])
    saved = [max(0, 6 - r["blocks"]) for r in rows["drllm"]]  # repeats save nothing: random skips none
    assert [6 - r["blocks"] for r in rows["random_skip"]] == saved and len(set(saved)) > 1
    assert rows["random_skip"] == [
        *result_rows(
            "random_skip",
            "eval_id",
            EXAMPLES,
            scorer.score(
                EXAMPLES,
                torch.tensor(
                    [
                        random_path(e.example_id, 6 - r["blocks"], 6, PathConstraints(), 0).counts
                        for e, r in zip(EXAMPLES, rows["drllm"], strict=True)
                    ]
                ),
                4,
            ),
        )
    ]


def test_random_skips_resumed_after_their_model_save_what_its_checkpoint_recorded(tmp_path):
    """A resumed run may score other batches than the run that decided Dr.LLM's paths, and a decision at a
    cost threshold can flip with a batch's rounding: the random paths follow the recorded result."""
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    tiny_cost_routers(loaded, [-3.0, 0.0, -1.0]).save(tmp_path / "costs")
    costs = Configuration.routed("costs", ["eval_id"], str(tmp_path / "costs"), -0.2)
    random = Configuration.random_like("random", ["eval_id"], costs, PathConstraints(), 0)
    runner = EvaluationRunner(loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path / "c", "c", 4)
    runner.run(costs)
    (checkpoint,) = (tmp_path / "c").glob("costs-eval_id-*.jsonl")
    records = [json.loads(line) for line in checkpoint.read_text().splitlines()]
    assert records[0]["blocks"] < 6
    records[0] |= {"path": [1] * 6, "blocks": 6}  # as if another batch's rounding had kept every layer
    checkpoint.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = runner.run_many([costs, random])
    recorded = {r["example_id"]: r["blocks"] for r in rows["costs"]}
    assert recorded[records[0]["example_id"]] == 6
    assert {r["example_id"]: r["blocks"] for r in rows["random"]} == {
        i: 6 - max(0, 6 - b) for i, b in recorded.items()
    }


def test_a_path_several_configurations_share_is_run_once(tmp_path):
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    skip = LayerPath((1, 1, 1, 1, 0, 1))
    rows, block_rows = {}, {}
    for names in (["skip_4"], ["skip_4", "same_path"]):
        runner = EvaluationRunner(
            loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path / str(len(names)), "c", 4
        )
        before = scorer.engine.counter.rows
        rows[len(names)] = runner.run_many([Configuration.static(n, ["eval_id"], skip) for n in names])
        block_rows[len(names)] = scorer.engine.counter.rows - before
    assert block_rows[2] == block_rows[1]
    assert [r["scores"] for r in rows[2]["same_path"]] == [r["scores"] for r in rows[1]["skip_4"]]


def test_agreement_with_vanilla_and_its_paired_test(tmp_path):
    scorer = _scorer()
    vanilla = result_rows("vanilla", "eval_id", EXAMPLES, scorer.score(EXAMPLES))
    skipped = result_rows(
        "skip", "eval_id", EXAMPLES, scorer.score(EXAMPLES, torch.tensor([[0, 0, 1, 1, 1, 1]] * 6))
    )
    frame = pd.DataFrame(vanilla + skipped)
    summary = summarize(frame, 6).set_index(["config", "task"])
    assert summary.loc[("vanilla", "all"), "agreement"] == 1.0 and summary.loc[
        ("vanilla", "all"), "kl_from_vanilla"
    ] == pytest.approx(0.0, abs=1e-9)
    agrees = [a["prediction"] == b["prediction"] for a, b in zip(vanilla, skipped, strict=True)]
    assert summary.loc[("skip", "all"), "agreement"] == pytest.approx(sum(agrees) / 6)
    assert summary.loc[("skip", "all"), "kl_from_vanilla"] > 0
    comparison = compare(frame, "skip", "vanilla", "eval_id")
    assert comparison["agreement_difference"] == pytest.approx(sum(agrees) / 6 - 1)


def test_results_are_checkpointed_and_keyed_by_what_they_depend_on(tmp_path):
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    runner = EvaluationRunner(loaded, scorer, {"eval_id": EXAMPLES}, {"eval_id": "h"}, tmp_path, "c0", 4)
    skip = Configuration.static("skip", ["eval_id"], LayerPath((1, 0, 1, 1, 1, 1)))
    rows = runner.run(skip)
    assert [r["blocks"] for r in rows] == [5] * 6 and len(list(tmp_path.glob("skip-eval_id-*.jsonl"))) == 1
    assert runner.run(skip) == rows  # resumed from the checkpoint
    runner.run(Configuration.static("skip", ["eval_id"], LayerPath((1, 1, 0, 1, 1, 1))))
    assert len(list(tmp_path.glob("skip-eval_id-*.jsonl"))) == 2  # another path: another checkpoint
    RouterSet(RouterConfig(num_layers=6, hidden_size=64, bottleneck=3)).save(tmp_path / "r")
    base = Configuration.routed("drllm", ["eval_id"], str(tmp_path / "r"), 0.2)
    assert base.identity == Configuration.routed("x", ["eval_ood"], str(tmp_path / "r"), 0.2).identity
    assert Configuration.routed("drllm", ["eval_id"], str(tmp_path / "r"), 0.1).identity != base.identity
    RouterSet(RouterConfig(6, 64, 3, routing=Routing(max_skip_run=1))).save(tmp_path / "r1")
    assert Configuration.routed("drllm", ["eval_id"], str(tmp_path / "r1"), 0.2).identity != base.identity


def test_the_calibrate_stage_writes_the_calibrated_folder_and_refuses_bad_knobs(tmp_path):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "r")
    pd.DataFrame([dataclasses.asdict(e) for e in EXAMPLES]).to_parquet(tmp_path / "search.parquet")

    def calibrate(knob, grid=(0.0, 0.1), search=None):
        settings = {"knob": knob, "examples": 10, "grid": list(grid) if isinstance(grid, tuple) else grid}
        params = {"search": search or {"max_examples": None, "seed": 0}, "calibrate": settings}
        io.write_json(tmp_path / "params.json", params)  # JSON is YAML
        return run_stage(
            "calibrate",
            *("--params", tmp_path / "params.json", "--prepared", tmp_path, "--routers", tmp_path / "r"),
            *("--out", tmp_path / "drllm", "--metrics", tmp_path / "calibration.json"),
        )

    out_of_range = calibrate(1.5)
    assert (
        out_of_range.returncode == 1
        and "calibrate.knob (auto, or a number) must be a number in [-1, 1], got 1.5" in out_of_range.stderr
    )
    assert "got 'atuo'" in calibrate("atuo").stderr
    bad_search = calibrate("auto", search={"max_examples": -1})  # read as the search stage reads it
    assert bad_search.returncode == 1 and "search.max_examples must be at least 1" in bad_search.stderr
    assert "calibrate.grid is empty" in calibrate("auto", grid=()).stderr
    assert "calibrate.grid must be a number in [-1, 1], got 2" in calibrate("auto", grid=(0.0, 2)).stderr
    assert "`calibrate.grid` must be a list, e.g. [0.5]" in calibrate("auto", grid=0.5).stderr
    nothing_held_out = calibrate("auto")  # the search used every search question
    assert (
        nothing_held_out.returncode == 1
        and "search questions the search did not use" in nothing_held_out.stderr
    )
    assert not (tmp_path / "drllm").exists()
    fixed = calibrate(0.1)
    assert fixed.returncode == 0, fixed.stderr
    calibrated = read_router_config(tmp_path / "drllm")
    assert calibrated.routing.knob == 0.1 and read_router_config(tmp_path / "r").routing.knob is None
    trained, served = RouterSet.load(tmp_path / "r"), RouterSet.load(tmp_path / "drllm")
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), served.state_dict().values(), strict=True)
    )
    written = io.read_json(tmp_path / "calibration.json")
    assert written == {
        "knob": 0.1,
        "routers_hash": routers_hash(tmp_path / "drllm"),
        "examples": 0,
        "calibration": [],
    }


def test_the_pareto_pictures_single_points_move_sideways_apart_and_its_lines_stay():
    families = {f: [f] for f in ("vanilla", "random_skip", "random_deepest", "routers_shuffled")}
    shift = sideways(families | {"drllm": ["drllm", "drllm_knob_+0.5"], "best_static": ["1", "2", "3"]})
    assert shift["drllm"] == shift["best_static"] == shift["vanilla"] == 0.0
    assert [shift[f] for f in ("random_deepest", "random_skip", "routers_shuffled")] == [-DODGE, 0.0, DODGE]


def test_headline_is_flat_points_and_none_where_not_measured():
    document = {
        "num_layers": 30,
        "knob": 0.3,
        "static_budget": 1,
        "configs": {
            "vanilla/eval_id": {"accuracy": 0.5},
            "drllm/eval_id": {"accuracy": 0.45, "blocks_per_token": 28.8},
            "vanilla/eval_ood": {"accuracy": 0.4},
        },
        "comparisons": [
            {
                "config": "drllm",
                "reference": "vanilla",
                "set": "eval_id",
                "difference": -0.05,
                "ci_low": -0.08,
                "ci_high": -0.02,
                "mcnemar_p": 0.01,
            },
            {
                "config": "drllm",
                "reference": "best_static_1",
                "set": "eval_id",
                "difference": 0.02,
                "ci_low": -0.01,
                "ci_high": 0.05,
                "mcnemar_p": 0.2,
            },
        ],
    }
    flat = headline(document)
    assert all(not isinstance(v, (dict, list)) for v in flat.values())
    assert flat["knob"] == 0.3
    assert flat["vanilla_id_acc"] == pytest.approx(50.0)
    assert flat["drllm_id_blocks_saved"] == pytest.approx(1.2)
    assert flat["drllm_id_vs_vanilla_diff"] == pytest.approx(-5.0)
    assert flat["drllm_id_vs_static_ci_high"] == pytest.approx(5.0)
    assert flat["drllm_id_vs_static_p"] == 0.2
    assert flat["drllm_ood_acc"] is None and flat["drllm_ood_vs_static_p"] is None
    assert flat["early_exit_id_acc"] is None and flat["early_exit_id_vs_static_diff"] is None


def test_the_summary_shows_the_headline_configs_at_the_compared_budget_with_paired_figures():
    figures = {
        "n": 10,
        "accuracy": 0.5,
        "ci_low": 0.2,
        "ci_high": 0.8,
        "agreement": 0.9,
        "blocks_per_token": 29.0,
    }
    paired = {
        "n": 10,
        "difference": -0.1,
        "ci_low": -0.3,
        "ci_high": 0.1,
        "mcnemar_p": 0.5,
        "significant": False,
    }
    document = {
        "num_layers": 30,
        "knob": 0.3,
        "static_budget": 2,
        "configs": {
            "vanilla/eval_id": figures,
            "drllm/eval_id": figures,
            "best_static_1/eval_id": figures,
            "best_static_2/eval_id": figures,
        },
        "comparisons": [
            {
                "config": "drllm",
                "reference": "vanilla",
                "set": "eval_id",
                **paired,
                "agreement_difference": -0.1,
                "agreement_ci_low": -0.2,
                "agreement_ci_high": 0.0,
                "agreement_mcnemar_p": 0.04,
            },
            {
                "config": "drllm",
                "reference": "best_static_2",
                "set": "eval_id",
                **paired,
                "agreement_difference": 0.05,
                "agreement_ci_low": -0.05,
                "agreement_ci_high": 0.15,
                "agreement_mcnemar_p": 0.3,
            },
        ],
    }
    exit_versus = {**document["comparisons"][1], "config": "early_exit"}
    document["comparisons"] += [
        {**exit_versus, "reference": reference, "difference": 0.02}
        for reference in ("best_static_2", "faithful_static_2", "drllm")
    ]
    summary = summary_markdown(document)
    assert "| early_exit | best_static_2 | eval_id | +2.0 " in summary
    assert "| early_exit | drllm | eval_id | +2.0 " in summary and "faithful_static_2" not in summary
    assert "early exit" not in summary.splitlines()[0]  # not compared with vanilla: no sentence
    document["comparisons"].append({**exit_versus, "reference": "vanilla", "difference": -0.004})
    document["configs"]["early_exit/eval_id"] = {**figures, "blocks_per_token": 28.66}
    document["early_exit"] = {"layer": 9}
    assert (
        "the early exit after 9 layers scores -0.4 (-30.0 to +10.0, p = 0.500) executing 28.66;"
        in (summary_markdown(document).splitlines()[0])
    )
    assert "computed in a dtype the run did not record" in summary  # metrics written before it was recorded
    document["numerics"] = tiny_loaded().numerics
    summary = summary_markdown(document)
    assert f"computed in float32 on cpu (torch {torch.__version__})." in summary
    assert "| vanilla | eval_id | 10 | 50.0 [20.0, 80.0] | 90.0 | 1.00 | – |" in summary
    assert "| drllm | eval_id | 10 | 50.0 [20.0, 80.0] | 90.0 | 1.00 | -10.0 [-30.0, +10.0] |" in summary
    assert "best_static_2 | eval_id" in summary and "best_static_1" not in summary
    assert (
        "| drllm | best_static_2 | eval_id | -10.0 [-30.0, +10.0] | 0.500 | within noise | +5.0 [-5.0, +15.0] "
        "| 0.300 |" in summary
    )


def _generation_figures(bias: list[float]):
    """generation_check on tiny_loaded with routers whose every layer wants `bias` (skip, execute, repeat)."""
    loaded = tiny_loaded()
    routers = RouterSet(RouterConfig(6, 64, 8, 4, base_fingerprint=weights_fingerprint(loaded.model)))
    with torch.no_grad():
        for router in routers.routers:
            router.out.bias.copy_(torch.tensor(bias))
    scorer = ExampleScorer(
        PathEngine(loaded.model), loaded.tokenizer, {"gsm8k": {"scorer": "math", "max_new_tokens": 4}}
    )
    questions = [
        Example(f"q{i}", "arc_easy", text, ["a", "b"], 0).check() for i, text in enumerate(["Hi", "Why?"])
    ]
    problem = get_task("gsm8k").convert({"question": "2+2?", "answer": "2+2=4\n#### 4", "_row": 0}).check()
    return generation_check(RoutedModel(loaded, routers), scorer, questions, [problem], max_new_tokens=4)


def test_generation_is_measured_against_vanilla_greedy_output():
    figures, rows = _generation_figures([0.0, 10.0, 0.0])  # routers that execute every layer: vanilla
    assert [r["set"] for r in rows] == ["open", "open", "math"]
    for part in figures.values():
        assert part["identical_share"] == 1.0 and part["blocks_saved"] == 0.0
    assert 0 < figures["open"]["mean_tokens_to_divergence"] <= 4  # the whole continuation is shared
    assert figures["math"]["n"] == 1 and figures["math"]["vanilla_score"] == figures["math"]["drllm_score"]
    assert "vanilla_score" not in figures["open"]  # open questions have no reference answer
    table = markdown_table([{"prompts": name, **f} for name, f in figures.items()])
    assert table.splitlines()[0].endswith("| vanilla_score | drllm_score |")  # the math row's columns too

    figures, rows = _generation_figures([10.0, 0.0, 0.0])  # skips, forced back after runs of 2
    assert figures["open"]["blocks_saved"] == figures["math"]["blocks_saved"] == 4.0
    assert all(0 <= r["tokens_to_divergence"] <= 4 for r in rows)
    assert all(r["tokens_to_divergence"] < 4 for r in rows if not r["identical"])


def test_tokens_to_divergence_counts_the_shared_prefix():
    assert _common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert _common_prefix([1, 2], [1, 2, 3]) == 2  # one is a prefix of the other
    assert _common_prefix([5], [6]) == 0


def test_the_speed_check_times_the_task_prompts_the_routers_were_evaluated_on(monkeypatch):
    loaded = tiny_loaded()
    routed = RoutedModel(loaded, tiny_cost_routers(loaded, [-10.0, 0.0, 0.0]))  # skips layer 3 always
    scorer = routed.scorer()
    generate, seen = routed.engine.generate, []

    def recording(ids, *args, **kwargs):  # the real generation, with the prompt it was given noted
        seen.append(tuple(ids[0].tolist()))
        return generate(ids, *args, **kwargs)

    monkeypatch.setattr(routed.engine, "generate", recording)
    speed = speed_check(routed, scorer, EXAMPLES[:2], tokens=3)
    prompts = {tuple(scorer.prompt_ids(e)) for e in EXAMPLES[:2]}
    assert set(seen) == prompts  # warm-up and timed runs, vanilla and routed: the task prompts only
    assert tuple(loaded.tokenizer(EXAMPLES[0].question).input_ids) not in prompts  # not the raw question
    assert (speed["prompts"], speed["new_tokens"]) == (2, 3)
    assert speed["blocks_saved_pct"] == pytest.approx(100 / 6)


def test_evaluate_refuses_routers_trained_on_another_prompt_format(tmp_path):
    trained = {"defaults": {"chat_template": True}}
    RouterSet(RouterConfig(2, 4, routing=Routing(tasks=trained))).save(tmp_path / "r")
    check_prompt_format([str(tmp_path / "r")], trained, ["arc_easy"])  # the format vanilla is scored in
    with pytest.raises(ConfigError, match=r"trained on prompts formatted otherwise .* \['arc_easy'\]"):
        check_prompt_format([str(tmp_path / "r")], {"defaults": {"chat_template": False}}, ["arc_easy"])
