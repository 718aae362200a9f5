"""Promotion gates: whether an evaluated router set may take the `champion` alias (params.yaml `promote`)."""

from __future__ import annotations

from dataclasses import dataclass

from drllm_core.errors import DrllmError, config_from

FIGURES = (
    "id_accuracy",
    "id_vanilla_accuracy",
    "ood_accuracy",
    "ood_vanilla_accuracy",
    "blocks_saved",
    "generation_identical",
)


@dataclass(frozen=True)
class Gates:
    min_id_accuracy_delta: float = -0.02  # in-domain accuracy of Dr.LLM minus vanilla, at least
    max_ood_drop: float = 0.03  # out-of-domain accuracy drop against vanilla, at most
    min_blocks_saved: float = 1.0  # blocks saved per token in-domain, at least
    min_generation_identical: float = 0.2  # share of open answers generated exactly as vanilla, at least

    @classmethod
    def from_params(cls, params: dict) -> Gates:
        return config_from(cls, "promote", params)


def figures(evaluation: dict, where: str = "metrics/eval.json") -> dict:
    """The gated figures of metrics/eval.json; a document without them is a DrllmError naming the gap."""
    try:
        configs = evaluation["configs"]
        values = {
            "id_accuracy": configs["drllm/eval_id"]["accuracy"],
            "id_vanilla_accuracy": configs["vanilla/eval_id"]["accuracy"],
            "ood_accuracy": configs["drllm/eval_ood"]["accuracy"],
            "ood_vanilla_accuracy": configs["vanilla/eval_ood"]["accuracy"],
            "blocks_saved": evaluation["num_layers"] - configs["drllm/eval_id"]["blocks_per_token"],
            "generation_identical": evaluation.get("generation", {}).get("open", {}).get("identical_share"),
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise DrllmError(
            f"{where} lacks the figures promotion gates ({type(err).__name__}: {err}): rerun `dvc repro evaluate`"
        ) from None
    for key, value in values.items():
        if value is not None and not isinstance(value, int | float):
            raise DrllmError(f"{where}: {key} must be a number, got {value!r}: rerun `dvc repro evaluate`")
    return values


def gate_failures(values: dict, gates: Gates) -> list[str]:
    """Why `values` (figures) may not be promoted; empty when every gate passes."""
    failures = []
    delta = values["id_accuracy"] - values["id_vanilla_accuracy"]
    if delta < gates.min_id_accuracy_delta:
        failures.append(
            f"in-domain accuracy {delta * 100:+.2f} points vs vanilla, below the gate {gates.min_id_accuracy_delta * 100:+.2f}"
        )
    drop = values["ood_vanilla_accuracy"] - values["ood_accuracy"]
    if drop > gates.max_ood_drop:
        failures.append(
            f"out-of-domain accuracy drops {drop * 100:.2f} points, above the gate {gates.max_ood_drop * 100:.2f}"
        )
    if values["blocks_saved"] < gates.min_blocks_saved:
        failures.append(
            f"{values['blocks_saved']:.2f} blocks saved per token, below the gate {gates.min_blocks_saved}"
        )
    identical = values["generation_identical"]
    if identical is None:
        failures.append("the metrics hold no generation check (rerun evaluate: dvc repro evaluate)")
    elif identical < gates.min_generation_identical:
        failures.append(
            f"{identical * 100:.1f}% of open answers generated as vanilla's, below the gate "
            f"{gates.min_generation_identical * 100:.1f}%"
        )
    return failures
