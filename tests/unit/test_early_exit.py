"""The early exit on a tiny model: chosen on questions by what it keeps of vanilla's answers, and scored by the
evaluation runner as the paths it reads."""

from __future__ import annotations

import pytest
import torch

from drllm_core.early_exit import EarlyExit, choose_exit, exit_layers, exit_path
from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError
from drllm_core.evaluation import Configuration, EvaluateSettings, EvaluationRunner
from drllm_core.paths import LayerPath
from drllm_core.tasks.registry import get_task
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer
from tests.conftest import tiny_loaded

EXAMPLES = [
    Example(f"t/{i}", "t", f"Which word comes {'so ' * i}often?", ["one", "two", "three"], i % 3)
    for i in range(12)
]


def _scorer(tasks=None) -> ExampleScorer:
    loaded = tiny_loaded()
    return ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, tasks or {})


def test_exit_layers_are_depths_of_the_model_each_leaving_a_layer_to_skip():
    assert exit_layers([0.3, 0.5, 0.67, 0.8, 0.9], 30) == [9, 15, 20, 24, 27]
    assert exit_layers([0.01, 0.5, 0.99], 6) == [1, 3, 5]
    assert exit_path(2, 4) == LayerPath((1, 1, 0, 0))
    counts = EarlyExit(2, 0.5).counts([0.4, 0.6, float("nan")], 4)
    assert counts.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_the_exit_kept_is_the_layer_keeping_most_of_vanillas_answers_at_the_budget():
    """Each layer's figures are what scoring its exit path on the questions it sends gives."""
    scorer = _scorer()
    early_exit, trace = choose_exit(scorer, EXAMPLES, [2, 3, 4], blocks_saved=1.0, batch_size=5)
    assert [row["layer"] for row in trace] == [2, 3, 4]
    vanilla = scorer.score(EXAMPLES, torch.tensor([[1] * 6] * len(EXAMPLES)), 5)
    for row in trace:
        path = exit_path(row["layer"], 6)
        exits = scorer.score(EXAMPLES, torch.tensor([path.counts] * len(EXAMPLES)), 5)
        sent = [d.lead > row["threshold"] for d in exits]
        assert sum(sent) == round(len(EXAMPLES) / (6 - row["layer"]))  # one block per question, surest first
        assert min(d.lead for d, s in zip(exits, sent, strict=True) if s) > max(
            d.lead for d, s in zip(exits, sent, strict=True) if not s
        )
        kept = [not s or d.prediction == v.prediction for d, v, s in zip(exits, vanilla, sent, strict=True)]
        right = [(d if s else v).correct for d, v, s in zip(exits, vanilla, sent, strict=True)]
        assert row["agreement"] == pytest.approx(sum(kept) / len(kept))
        assert row["accuracy"] == pytest.approx(sum(right) / len(right))
        assert row["blocks_saved"] == pytest.approx(sum(sent) * (6 - row["layer"]) / len(EXAMPLES))
    best = max(trace, key=lambda r: r["agreement"])
    assert early_exit == EarlyExit(best["layer"], best["threshold"])


def test_an_exit_that_cannot_save_the_budget_is_refused():
    with pytest.raises(ConfigError, match="cannot save 2.0 blocks per token exiting at layers \\[4, 5\\]"):
        choose_exit(_scorer(), EXAMPLES, [4, 5], blocks_saved=2.0)
    with pytest.raises(ConfigError, match="exit_depths must be shares"):
        EvaluateSettings.from_params({"exit_depths": [0.5, 1.0]})
    with pytest.raises(ConfigError, match="exit_blocks_saved must be above 0"):
        EvaluateSettings.from_params({"exit_blocks_saved": 0})


def test_the_runner_scores_the_exit_on_the_questions_it_sends_and_vanilla_elsewhere(tmp_path):
    """Scored with the other paths of a batch, the exit reads its layer on vanilla's states; a generated answer
    is never read early."""
    tasks = {"gsm8k": {"scorer": "math", "max_new_tokens": 4}}
    scorer = _scorer(tasks)
    problem = get_task("gsm8k").convert({"question": "2+2?", "answer": "2+2=4\n#### 4", "_row": 0}).check()
    reads = scorer.score(EXAMPLES, torch.tensor([[1, 1, 1, 0, 0, 0]] * len(EXAMPLES)), 4)
    middle = sorted(d.lead for d in reads)[len(EXAMPLES) // 2 - 1 : len(EXAMPLES) // 2 + 1]
    threshold = sum(middle) / 2  # between two questions' leads: none on the edge
    early_exit = EarlyExit(3, threshold)
    runner = EvaluationRunner(
        tiny_loaded(), scorer, {"eval_id": [*EXAMPLES, problem]}, {"eval_id": "h"}, tmp_path, "c", 4
    )
    configs = [
        Configuration.static("vanilla", ["eval_id"], LayerPath.default(6)),
        Configuration.exiting("early_exit", ["eval_id"], early_exit),
    ]
    rows = runner.run_many(configs)
    vanilla = {r["example_id"]: r for r in rows["vanilla"]}
    for example, read, row in zip(EXAMPLES, reads, rows["early_exit"][:-1], strict=True):
        if read.lead > threshold:
            assert row["path"] == [1, 1, 1, 0, 0, 0] and row["prediction"] == read.prediction
            assert row["scores"] == pytest.approx(list(read.scores), abs=1e-4)
        else:
            assert {**row, "config": "vanilla"} == vanilla[example.example_id]
    assert sum(r["blocks"] < 6 for r in rows["early_exit"]) == sum(d.lead > threshold for d in reads) > 0
    assert (
        rows["early_exit"][-1]["example_id"] == problem.example_id
        and rows["early_exit"][-1]["path"] == [1] * 6
    )
