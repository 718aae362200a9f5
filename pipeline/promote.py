"""Promote a router version: move the MLflow alias `champion` to it only if the gates in params.yaml pass.

  python -m pipeline.promote             # the version holding models/drllm, the evaluated router folder
  make promote

The gates (drllm_core.promotion) read metrics/eval.json, which must describe that router folder (its content
hash is checked): in-domain accuracy against vanilla, out-of-domain accuracy drop, blocks saved per token,
and the share of open in-domain answers generated exactly as vanilla's. The command prints the comparison
with the current champion and refuses, exit status 1, with the reason when a gate fails. The promoted
version keeps its evaluation figures as tags, so the next promotion can compare.
"""

from __future__ import annotations

from drllm_core import io, tracking
from drllm_core.errors import DrllmError
from drllm_core.promotion import FIGURES, Gates, figures, gate_failures
from drllm_core.routing import read_router_config, routers_hash
from pipeline.common import load_params, log, parser, run, section


class PromotionRefused(DrllmError):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--routers", default="models/drllm", help="the evaluated router folder")
    args.add_argument("--metrics", default="metrics/eval.json")
    args.add_argument("--alias", default="champion")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    gates = Gates.from_params(section(params, "promote"))
    name = tracking.registered_model_name(read_router_config(args.routers).base_model_name)
    digest = routers_hash(args.routers)
    evaluation = io.read_json(args.metrics)
    if evaluation.get("routers_hash") != digest:
        raise PromotionRefused(
            f"{args.metrics} evaluated other routers ({evaluation.get('routers_hash')}), not {args.routers} "
            f"({digest}): run `dvc repro evaluate`"
        )
    values = figures(evaluation, args.metrics)
    tracking.configure()
    version = tracking.find_version(name, digest, section(params, "model"))
    if version is None:
        raise PromotionRefused(
            f"routers {args.routers} ({digest}) are not registered in {name}: run `dvc repro register`"
        )
    champion = tracking.version_by_alias(name, args.alias)
    print(
        f"{name}: candidate version {version.version} vs {args.alias} {champion.version if champion else '(none)'}"
    )
    for key in FIGURES:
        current = champion.tags.get(f"drllm.{key}", "-") if champion else "-"
        shown = "-" if values[key] is None else f"{values[key]:.4f}"
        print(f"  {key:22s} candidate {shown}   {args.alias} {current}")
    failures = gate_failures(values, gates)
    if failures:
        raise PromotionRefused(f"version {version.version} not promoted: " + "; ".join(failures))
    tags = {f"drllm.{key}": f"{value:.4f}" for key, value in values.items()}
    tracking.promote_version(name, version.version, args.alias, tags)
    log.info(
        "promoted %s version %s to @%s (load it with models:/%s@%s)",
        name,
        version.version,
        args.alias,
        name,
        args.alias,
    )


if __name__ == "__main__":
    raise SystemExit(main())
