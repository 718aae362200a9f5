"""The tuned lens of benchmarks.deep_skip and benchmarks.tuned_lens: its batches read vanilla to the bit, and
its ridge fit recovers an affine map."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.deep_skip import (
    fit_lens,
    five_folds,
    identity_lens,
    lead,
    lens_batches,
    lens_decisions,
)
from drllm_core.engine import PathEngine
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer
from tests.conftest import tiny_loaded

EXAMPLES = [
    Example(f"t/{i}", "t", f"Which word comes {'so ' * i}often?", ["one", "two", "three"], i % 3)
    for i in range(7)
]


def test_lens_batches_read_vanilla_and_the_early_exit_to_the_bit():
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    batches = list(lens_batches(scorer, EXAMPLES, layer=2, batch_size=3))
    assert sorted(q for lens in batches for q in lens.questions) == list(range(len(EXAMPLES)))
    for lens, path in ((None, [1] * 6), (identity_lens(64), [1, 1, 0, 0, 0, 0])):
        read = lens_decisions(scorer, EXAMPLES, batches, lens)
        decisions = scorer.score(EXAMPLES, torch.tensor([path] * len(EXAMPLES)), 3)
        assert [replace(read[i], path=d.path) for i, d in enumerate(decisions)] == decisions
    fitted = fit_lens(batches, {0, 1, 2, 3, 4})
    lensed = lens_decisions(scorer, EXAMPLES, batches, fitted, questions={5, 6})
    assert set(lensed) == {5, 6} and all(d.lead == lead(d.scores) >= 0 for d in lensed.values())


def test_lead_is_the_log_margin_and_does_not_saturate():
    assert lead([-60.0, -10.0, -75.0]) == 50.0 and lead([-60.0, -10.0]) > lead([-40.0, -10.0])
    assert lead([-1.0, -1.0, -3.0]) == 0.0


def test_fit_lens_recovers_an_affine_map_and_folds_partition_the_questions():
    generator = torch.Generator().manual_seed(0)
    weight, shift = torch.randn(8, 8, generator=generator), torch.randn(8, generator=generator)
    batches = []
    for start in range(0, 40, 10):
        entering = torch.randn(10, 5, 8, generator=generator)
        final = SimpleNamespace(hidden=entering @ weight + shift)
        scored = [torch.arange(5)] * 10
        batches.append(
            SimpleNamespace(
                questions=list(range(start, start + 10)), entering=entering, final=final, scored=scored
            )
        )
    x_mean, fitted, y_mean = fit_lens(batches, set(range(30)))  # the last batch held out
    x = batches[-1].entering.reshape(-1, 8).double()
    mapped = (x - x_mean) @ fitted + y_mean
    assert torch.allclose(mapped, batches[-1].final.hidden.reshape(-1, 8).double(), atol=0.05)
    folds = five_folds(23, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(23)) and {len(f) for f in folds} == {4, 5}
