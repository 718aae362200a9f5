"""Apply a preset to params.yaml: `python -m pipeline.preset presets/paper.yaml`, then `dvc repro`.

A preset (presets/*.yaml) holds only the params that differ from the defaults (drllm_core.presets). The
merge keeps params.yaml's comments; `git checkout params.yaml` goes back to the defaults, and
`dvc exp run` after applying a preset records the run as an experiment.
"""

from __future__ import annotations

from drllm_core.presets import apply_preset
from pipeline.common import log, parser, run


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("preset", help="a presets/*.yaml file")
    return run(_main, args, argv)


def _main(args) -> None:
    changed = apply_preset(args.params, args.preset)
    log.info("%s: set %d params from %s: %s", args.params, len(changed), args.preset, ", ".join(changed))


if __name__ == "__main__":
    raise SystemExit(main())
