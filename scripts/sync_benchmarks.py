"""docs/benchmarks.md's figures: each published benchmark result rendered as tables between its markers.

A benchmark writes benchmarks/results/<name>.json (git-ignored: smoke runs overwrite it). A run worth
publishing is copied into results/benchmarks/ (committed), and docs/benchmarks.md shows it in the block
`<!-- benchmark:<name> -->` ... `<!-- /benchmark -->`, with the command, commit and machine it ran on:
    python scripts/sync_benchmarks.py --from benchmarks/results/scale.json   # publish (several at once), render
    python scripts/sync_benchmarks.py                                        # render what is committed
Only runs of committed code are published. tests/unit/test_docs.py fails while the page differs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from drllm_core import io
from drllm_core.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(<!-- benchmark:([\w.-]+) -->\n)(.*?)(<!-- /benchmark -->)", re.S)


def records(folder: Path = RECORDS) -> dict[str, dict]:
    return {path.stem: io.read_json(path) for path in sorted(folder.glob("*.json"))}


def publish(result: Path, folder: Path = RECORDS) -> Path:
    """Copy a benchmark's result file into the published records, refusing runs no commit reproduces."""
    record = io.read_json(result)
    commit = record.get("commit")
    if not commit or commit.endswith("+dirty"):
        raise ValueError(
            f"{result} was measured on {'uncommitted changes' if commit else 'no known commit'} "
            f"(commit: {commit}): commit the code, rerun the benchmark, then publish"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(result, folder / result.name))


def command(name: str, record: dict) -> str:
    """The command line that reproduces a record: its module and every argument it ran with."""
    module = name.split("-")[0]  # inference-<model> is benchmarks.inference
    args = " ".join(
        f"--{key.replace('_', '-')} {value}"
        for key, value in record.get("args", {}).items()
        if value is not None
    )
    return f"python -m benchmarks.{module} {args}".rstrip()


def render_record(name: str, record: dict) -> str:
    machine = record["machine"]
    parts = [
        f"`{command(name, record)}` at commit {record['commit']}; {machine['platform']}, "
        f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, torch {machine['torch']}"
        + (f"; model {record['model']}" if "model" in record else "")
        + (
            f", in {record['numerics']['dtype']} on {record['numerics']['device']}"
            if "numerics" in record
            else ""
        )
        + ".\n"
    ]
    for key, rows in record.items():
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            parts.append(f"\n*{key.replace('_', ' ')}*\n\n{markdown_table(rows)}")
    return "".join(parts)


def render(page: str, found: dict[str, dict]) -> str:
    """The page with every benchmark block refilled from its record; a block without a record, or a
    record without a block, is an error (the page would show stale figures or miss new ones)."""
    named = [match[2] for match in BLOCK.finditer(page)]
    if missing := sorted(set(named) - set(found)):
        raise ValueError(
            f"docs/benchmarks.md shows {missing}, which {RECORDS.relative_to(ROOT)}/ does not hold"
        )
    if unshown := sorted(set(found) - set(named)):
        raise ValueError(f"no `<!-- benchmark:NAME -->` block in docs/benchmarks.md for {unshown}: add one")
    return BLOCK.sub(lambda m: m[1] + render_record(m[2], found[m[2]]) + m[4], page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from", dest="results", type=Path, nargs="+", default=[], help="benchmark results to publish first"
    )
    args = parser.parse_args(argv)
    try:
        for result in args.results:
            print(f"published {publish(result).relative_to(ROOT)}")
        io.write_text(PAGE, render(PAGE.read_text(), records()))
    except (FileNotFoundError, ValueError) as error:  # JSONDecodeError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
