"""Copy the report stage's headline tables (reports/summary.md) into README.md between its summary markers,
so the README's figures are the pipeline's own. Run after `make repro`; tests/unit/test_docs.py fails while
they differ."""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN, END = "<!-- summary:begin (scripts/sync_readme.py) -->", "<!-- summary:end -->"


def with_summary(readme: str, summary: str) -> str:
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{summary}{END}{tail}"


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    readme, summary = root / "README.md", root / "reports" / "summary.md"
    if not summary.is_file():
        print(
            f"error: {summary} does not exist: run `make repro` (its report stage writes it)", file=sys.stderr
        )
        return 1
    try:
        updated = with_summary(readme.read_text(), summary.read_text())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(updated)
    tmp.replace(readme)
    print(f"README.md now includes {summary.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
