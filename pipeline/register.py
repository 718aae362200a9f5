"""Stage `register`: put the trained routers into the MLflow model registry as a pyfunc, alias `candidate`.

The registered model is named after the base model (drllm-<model>). Its model config holds the operating
point the calibrate stage wrote (metrics/knob.json: knob and skip-run limit) and the default prompt format
(`tasks.defaults.chat_template`), so the version serves as `evaluate` measured (drllm_core.tracking.Serving).
A version is keyed by the routers' content hash and the knob, so a router set DVC restores from its run cache
is registered exactly once, however often this runs. Reads params `model` and `tasks`.

Writes --out (default models/registered.json: name, version, alias, serving settings, store), which git
ignores: a fresh clone lacks it, so its `dvc repro` registers the routers in its own store even when every
other output reproduces from dvc.lock.
"""

from __future__ import annotations

from dataclasses import asdict

from drllm_core import io, tracking
from drllm_core.evaluation import operating_point
from drllm_core.routers import routers_hash
from drllm_core.tasks.prompts import default_settings
from pipeline.common import load_params, log, parser, run, section


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--routers", required=True, help="e.g. models/routers/mcts")
    args.add_argument("--knob", default="metrics/knob.json", help="the calibrate stage's output")
    args.add_argument("--alias", default="candidate")
    args.add_argument("--out", default="models/registered.json", help="the registered version, as a record")
    args = args.parse_args()
    params = load_params(args.params)
    config = io.read_json(f"{args.routers}/config.json")
    name = tracking.registered_model_name(config["base_model_name"])
    digest = routers_hash(args.routers)
    point = operating_point(args.knob, args.routers)
    serving = tracking.Serving(
        point.knob, point.max_skip_run, default_settings(params.get("tasks")).chat_template
    )
    version, newly = tracking.register_routers(
        args.routers,
        name,
        digest,
        section(params, "model"),
        serving,
        args.alias,
        {"drllm.routers_hash": digest},
    )
    record = {
        "name": name,
        "version": version.version,
        "alias": args.alias,
        **asdict(serving),
        "routers_hash": digest,
        "model_uri": f"models:/{name}/{version.version}",
        "tracking_uri": tracking.tracking_uri(),
    }
    io.write_json(args.out, record)
    state = "registered" if newly else "already registered"
    log.info(
        "%s %s version %s (routers %s, knob %+g, skip runs up to %s), alias %s",
        state,
        name,
        version.version,
        digest,
        point.knob,
        point.max_skip_run,
        args.alias,
    )


if __name__ == "__main__":
    run(main)
