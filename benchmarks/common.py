"""Shared benchmark plumbing: interleaved timing (so machine noise hits every variant alike), a printed
table and a JSON file under benchmarks/results/."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from drllm_core import io
from drllm_core.report import columns_of

RESULTS = Path(__file__).parent / "results"


def command_line(description: str) -> argparse.ArgumentParser:
    """The command line of a benchmark, its module docstring as the help text."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def interleaved_samples(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds per variant and round; the variants run round-robin so drift affects all of them, and
    round i of one variant can be paired with round i of another."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    samples = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return samples


def interleaved_times(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict:
    """Median wall seconds per variant of interleaved_samples."""
    return medians(interleaved_samples(variants, repeats, warmup))


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(times) for name, times in samples.items()}


class TimedRouting:
    """A routed model's decider for one batch, timed: `seconds` adds up the time spent in the routers. With
    `counts` (B, L), their decisions are replaced by those fixed paths after they have done all their work."""

    def __init__(self, routed, mask: torch.Tensor, counts: torch.Tensor | None = None):
        self.routed, self.mask, self.counts = routed, mask, counts
        self.seconds = 0.0

    def decider(self):
        inner = self.routed.decider(self.mask)

        def decide(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            decided = inner(layer, hidden)
            self.seconds += time.perf_counter() - start
            return decided if self.counts is None else self.counts[:, layer]

        return decide


def print_table(title: str, rows: list[dict]) -> None:
    columns = columns_of(rows)  # rows may differ: blanks where a row has none
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "commit": _commit(),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        **payload,
    }
    path = io.write_json(RESULTS / f"{name}.json", payload)
    print(f"\nwrote {path}")
    return path


PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "plots", "reports")  # what `dvc repro` rewrites in git


def _commit(folder: Path = Path(__file__).parent) -> str | None:
    """The checked-out commit, with `+dirty` when tracked files differ from it (None outside git). The
    pipeline's own outputs do not count: a benchmark run beside a finished `dvc repro` measures the code."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=folder)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return None
    changed = git("diff", "--quiet", "HEAD", "--", ".", *(f":(exclude){p}" for p in PIPELINE_OUTPUTS))
    return head.stdout.strip() + ("+dirty" if changed.returncode else "")
