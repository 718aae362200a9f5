"""Stage `register`: put the calibrated routers into the MLflow model registry as a pyfunc, alias `candidate`.

The registered model is named after the base model (drllm-<model>), and a version is the router folder:
its weights, base model and routing (knob, path limits, prompt format), keyed by the folder's content hash,
so the same folder is registered once however often this runs. Writes --out (default
models/registered.json: name, version, alias, knob, store), which git ignores: a fresh clone lacks it, so its
`dvc repro` registers the routers in its own store even when every other output reproduces from dvc.lock.
Reads params `model` (how the served model loads the base model).
"""

from __future__ import annotations

from drllm_core import io, tracking
from drllm_core.models import ModelSpec
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterMismatch, routers_hash
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--routers", default="models/drllm", help="the calibrated routers")
    args.add_argument("--alias", default="candidate")
    args.add_argument("--out", default="models/registered.json", help="the registered version, as a record")
    return run(_main, args, argv)


def _main(args) -> None:
    params = load_params(args.params)
    config = RouterSet.load(args.routers).config  # whole and servable, or refused before registering
    if not config.base_model_name:
        raise RouterMismatch(
            f"{args.routers}/config.json names no base model: retrain the routers (dvc repro)"
        )
    name = tracking.registered_model_name(config.base_model_name)
    digest = routers_hash(args.routers)
    model = ModelSpec.from_params(section(params, "model"))
    # the cache as an absolute folder: the served model then finds the converted weights from anywhere
    model_params = {**section(params, "model"), "cache_dir": str(model.cache_path())}
    routing = config.routing
    knob, chat_template = routing.knob or 0.0, routing.prompt_settings().chat_template
    version, newly = tracking.register_routers(
        args.routers, name, digest, model_params, knob, chat_template, args.alias
    )
    record = {
        "name": name,
        "version": version.version,
        "alias": args.alias,
        "knob": config.routing.knob,
        "routers_hash": digest,
        "model_uri": f"models:/{name}/{version.version}",
        "tracking_uri": tracking.tracking_uri(),
    }
    io.write_json(args.out, record)
    log.info(
        "%s %s version %s (routers %s, knob %+g), alias %s",
        "registered" if newly else "already registered",
        name,
        version.version,
        digest,
        config.routing.knob or 0.0,
        args.alias,
    )


if __name__ == "__main__":
    raise SystemExit(main())
