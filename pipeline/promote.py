"""Promote a router version: move the MLflow alias `champion` to it only if the gates in params.yaml pass.

  python -m pipeline.promote             # the version holding models/routers/mcts at the evaluated knob
  make promote

The gates read metrics/eval.json, which must describe that router set (its content hash is checked) at the
knob the version serves at:
in-domain accuracy against vanilla, out-of-domain accuracy drop, and blocks saved per token. The command
prints the comparison with the current champion and refuses, exit status 1, with the reason when a gate
fails. The promoted version keeps its evaluation figures as tags, so the next promotion can compare.
"""

from __future__ import annotations

from drllm_core import io, tracking
from drllm_core.errors import DrllmError
from drllm_core.routers import routers_hash
from pipeline.common import load_params, log, parser, run, section

FIGURES = ("id_accuracy", "id_vanilla_accuracy", "ood_accuracy", "ood_vanilla_accuracy", "blocks_saved")


class PromotionRefused(DrllmError):
    pass


def figures(evaluation: dict) -> dict:
    configs = evaluation["configs"]
    layers = evaluation["num_layers"]
    return {
        "id_accuracy": configs["drllm/eval_id"]["accuracy"],
        "id_vanilla_accuracy": configs["vanilla/eval_id"]["accuracy"],
        "ood_accuracy": configs["drllm/eval_ood"]["accuracy"],
        "ood_vanilla_accuracy": configs["vanilla/eval_ood"]["accuracy"],
        "blocks_saved": layers - configs["drllm/eval_id"]["blocks_per_token"],
    }


def gate_failures(values: dict, gates: dict) -> list[str]:
    failures = []
    delta = values["id_accuracy"] - values["id_vanilla_accuracy"]
    if delta < gates["min_id_accuracy_delta"]:
        failures.append(
            f"in-domain accuracy {delta * 100:+.2f} points vs vanilla, below the gate {gates['min_id_accuracy_delta'] * 100:+.2f}"
        )
    drop = values["ood_vanilla_accuracy"] - values["ood_accuracy"]
    if drop > gates["max_ood_drop"]:
        failures.append(
            f"out-of-domain accuracy drops {drop * 100:.2f} points, above the gate {gates['max_ood_drop'] * 100:.2f}"
        )
    if values["blocks_saved"] < gates["min_blocks_saved"]:
        failures.append(
            f"{values['blocks_saved']:.2f} blocks saved per token, below the gate {gates['min_blocks_saved']}"
        )
    return failures


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--routers", default="models/routers/mcts")
    args.add_argument("--metrics", default="metrics/eval.json")
    args.add_argument("--alias", default="champion")
    args = args.parse_args()
    gates = section(load_params(args.params), "promote")
    config = io.read_json(f"{args.routers}/config.json")
    name = tracking.registered_model_name(config["base_model_name"])
    digest = routers_hash(args.routers)
    tracking.configure()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    evaluation = io.read_json(args.metrics)
    if evaluation.get("routers_hash") != digest:
        raise PromotionRefused(
            f"{args.metrics} evaluated other routers ({evaluation.get('routers_hash')}), not {digest}: run `dvc repro evaluate`"
        )
    knob = float(evaluation["knob"])
    version = tracking.find_version(name, digest, knob)
    if version is None:
        raise PromotionRefused(
            f"routers {args.routers} ({digest}) at knob {knob:+g} are not registered in {name}: run `dvc repro register` first"
        )
    values = figures(evaluation)
    try:
        champion = client.get_model_version_by_alias(name, args.alias)
    except MlflowException:
        champion = None
    print(
        f"{name}: candidate version {version.version} vs {args.alias} {champion.version if champion else '(none)'}"
    )
    for key in FIGURES:
        current = champion.tags.get(f"drllm.{key}", "-") if champion else "-"
        print(f"  {key:22s} candidate {values[key]:.4f}   {args.alias} {current}")
    failures = gate_failures(values, gates)
    if failures:
        raise PromotionRefused(f"version {version.version} not promoted: " + "; ".join(failures))
    for key, value in values.items():
        client.set_model_version_tag(name, version.version, f"drllm.{key}", f"{value:.4f}")
    client.set_registered_model_alias(name, args.alias, version.version)
    log.info(
        "promoted %s version %s to @%s (load it with models:/%s@%s)",
        name,
        version.version,
        args.alias,
        name,
        args.alias,
    )


if __name__ == "__main__":
    run(main)
