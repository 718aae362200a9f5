"""Promotion gates: each gate refuses with its reason, and metrics without a generation check never pass."""

from __future__ import annotations

from drllm_core.promotion import Gates, figures, gate_failures

PASSING = {
    "id_accuracy": 0.50,
    "id_vanilla_accuracy": 0.51,
    "ood_accuracy": 0.40,
    "ood_vanilla_accuracy": 0.41,
    "blocks_saved": 1.5,
    "generation_identical": 0.6,
}


def test_figures_that_clear_every_gate_pass():
    assert gate_failures(PASSING, Gates()) == []


def test_each_gate_refuses_with_its_reason():
    cases = {
        "id_accuracy": (0.40, "in-domain accuracy -11.00 points vs vanilla"),
        "ood_accuracy": (0.30, "out-of-domain accuracy drops 11.00 points"),
        "blocks_saved": (0.5, "0.50 blocks saved per token"),
        "generation_identical": (0.1, "10.0% of open answers generated as vanilla's, below the gate 20.0%"),
    }
    for key, (value, reason) in cases.items():
        (failure,) = gate_failures({**PASSING, key: value}, Gates())
        assert reason in failure, key


def test_metrics_without_a_generation_check_are_refused():
    evaluation = {
        "num_layers": 30,
        "configs": {
            "drllm/eval_id": {"accuracy": 0.5, "blocks_per_token": 28.5},
            "vanilla/eval_id": {"accuracy": 0.51},
            "drllm/eval_ood": {"accuracy": 0.4},
            "vanilla/eval_ood": {"accuracy": 0.41},
        },
    }
    (failure,) = gate_failures(figures(evaluation), Gates())
    assert "no generation check" in failure
