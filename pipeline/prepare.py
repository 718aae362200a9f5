"""Stage `prepare`: benchmark data in, clean prompt sets out (data/prepared/).

Writes search.parquet, eval_id.parquet, eval_ood.parquet, shots.parquet (schema: drllm_core/tasks/schema.py)
and manifest.json (counts, content hashes, malformed rows, overlap removed). Reads params `prepare`.
"""

from __future__ import annotations

from drllm_core import io
from drllm_core.prepare import build_sets
from pipeline.common import load_params, log, parser, run, section


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__)
    args.add_argument("--out", default="data/prepared")
    return run(_main, args, argv)


def _main(args) -> None:
    frames, manifest = build_sets(section(load_params(args.params), "prepare"))
    with io.atomic_dir(args.out) as tmp:
        for name, frame in frames.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        io.write_json(tmp / "manifest.json", manifest)
    for name, described in manifest["sets"].items():
        log.info("%s: %d examples %s", name, described["count"], described["tasks"])
    removed = manifest["removed_for_overlap"]
    log.info("removed for overlap with evaluation sets: %s; written to %s", removed, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
