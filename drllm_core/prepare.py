"""Build the prepared example sets: `search` (questions to find layer paths on), `eval_id` (in-domain test),
`eval_ood` (out-of-domain test) and `shots` (few-shot demonstrations), with a manifest.

Guarantees: deterministic for a seed (sampling orders examples by a hash of seed and id, so it does not depend
on source order); no example of `search` or `shots` shares an id or a normalised question with an evaluation
set; malformed source rows are counted and reported, and too many of them stop the build.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from drllm_core.errors import DrllmError, config_from
from drllm_core.tasks.registry import get_task, local_task
from drllm_core.tasks.schema import COLUMNS, Example, MalformedRow
from drllm_core.tasks.sources import SOURCES, read_rows

SET_NAMES = ("search", "eval_id", "eval_ood", "shots")
EVAL_SETS = ("eval_id", "eval_ood")


class PrepareError(DrllmError):
    pass


@dataclass(frozen=True)
class SetEntry:
    """One task's contribution to a set (an item under `prepare.sets.<set>` in params.yaml)."""

    task: str
    source: str = "embedded"
    split: str = "validation"
    limit: int | None = None  # the first `limit` examples in the seeded order; None: every example
    path: str | None = None  # local source file

    @classmethod
    def parse(cls, set_name: str, item: dict) -> SetEntry:
        if not isinstance(item, dict) or "task" not in item:
            raise PrepareError(f"prepare.sets.{set_name}: every item needs a `task` key, got {item!r}")
        if "size" in item:  # DVC's run cache drops every key named `size` from its key: a changed size
            # would restore the data of a run with another size instead of preparing it
            raise PrepareError(
                f"prepare.sets.{set_name}, task {item['task']}: `size` is now called `limit` (DVC's run cache "
                "ignores keys named size); rename it in params.yaml"
            )
        entry = config_from(cls, f"prepare.sets.{set_name} ({item['task']})", item)
        if entry.limit is not None and entry.limit < 1:
            raise PrepareError(
                f"prepare.sets.{set_name}, task {entry.task}: limit must be at least 1, or left out for every "
                f"example; got {entry.limit}"
            )
        if entry.source not in SOURCES:
            raise PrepareError(f"prepare.sets.{set_name}, task {entry.task}: unknown source {entry.source!r}")
        if entry.source != "local":
            get_task(entry.task)  # raises UnknownTask naming the registered ones
        return entry


@dataclass
class Loaded:
    examples: list[Example]
    rows_read: int
    malformed: list[str] = field(default_factory=list)  # "row N: reason"


def load_entry(entry: SetEntry) -> Loaded:
    spec = local_task(entry.task) if entry.source == "local" else get_task(entry.task)
    examples, malformed, rows = [], [], 0
    for row in read_rows(spec, entry.source, entry.split, entry.path):
        rows += 1
        try:
            example = spec.convert(row)
            example.source, example.split = entry.source, entry.split
            examples.append(example.check())
        except (MalformedRow, KeyError, TypeError, ValueError) as err:
            malformed.append(f"row {row['_row']}: {type(err).__name__}: {err}")
    return Loaded(examples, rows, malformed)


def sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """The first `limit` examples in an order fixed by (seed, example id)."""
    ranked = sorted(examples, key=lambda e: hashlib.sha256(f"{seed}:{e.example_id}".encode()).hexdigest())
    return ranked if limit is None else ranked[:limit]


@dataclass(frozen=True)
class PrepareSettings:
    """params.yaml's `prepare` section."""

    seed: int = 0
    max_malformed_share: float = 0.0
    sets: dict | None = None  # set name -> entries (SetEntry.parse checks each)


def build_sets(params: dict) -> tuple[dict[str, pd.DataFrame], dict]:
    """Frames per set and the manifest, from the `prepare` section of params.yaml."""
    settings = config_from(PrepareSettings, "prepare", params)
    seed, limit, sets_params = settings.seed, settings.max_malformed_share, settings.sets or {}
    if not 0 <= limit <= 1:
        raise PrepareError(f"prepare.max_malformed_share must lie in [0, 1], got {limit}")
    if not isinstance(sets_params, dict):
        raise PrepareError(
            f"prepare.sets must map set names ({', '.join(SET_NAMES)}) to lists, got {sets_params!r}"
        )
    unknown = set(sets_params) - set(SET_NAMES)
    if unknown:
        raise PrepareError(f"unknown sets in prepare.sets: {sorted(unknown)}; use {', '.join(SET_NAMES)}")
    records: dict[str, list[dict]] = {}
    report = {"malformed": {}, "duplicates": {}, "removed_for_overlap": {}}
    for set_name in SET_NAMES:
        chosen: list[Example] = []
        items = sets_params.get(set_name) or []
        if not isinstance(items, list):
            raise PrepareError(
                f"prepare.sets.{set_name} must be a list of {{task: ...}} entries, got {items!r}"
            )
        for item in items:
            entry = SetEntry.parse(set_name, item)
            loaded = load_entry(entry)
            _check_malformed(set_name, entry, loaded, limit, report)
            chosen += sample(loaded.examples, entry.limit, seed)
        records[set_name], report["duplicates"][set_name] = _deduplicate([e.record() for e in chosen])
    for set_name in ("search", "shots"):
        records[set_name], report["removed_for_overlap"][set_name] = _without_overlap(records, set_name)
    frames = {name: pd.DataFrame(rows, columns=COLUMNS) for name, rows in records.items()}
    for name, frame in frames.items():
        if name != "shots" and frame.empty and sets_params.get(name):
            raise PrepareError(
                f"set {name!r} came out empty: check its tasks, splits and limits in params.yaml"
            )
    assert_no_overlap(frames)
    manifest = {
        "seed": seed,
        "sets": {name: _describe(frame) for name, frame in frames.items()},
        **report,
    }
    return frames, manifest


def _check_malformed(set_name: str, entry: SetEntry, loaded: Loaded, limit: float, report: dict) -> None:
    if not loaded.rows_read:
        raise PrepareError(f"task {entry.task} ({entry.source} {entry.split}, set {set_name}) has no rows")
    share = len(loaded.malformed) / loaded.rows_read
    key = f"{set_name}/{entry.task}"
    report["malformed"][key] = {
        "rows": loaded.rows_read,
        "malformed": len(loaded.malformed),
        "examples": loaded.malformed[:20],
    }
    if share > limit:
        shown = "; ".join(loaded.malformed[:5])
        raise PrepareError(
            f"task {entry.task} ({entry.source} {entry.split}, set {set_name}): {len(loaded.malformed)} of "
            f"{loaded.rows_read} rows are malformed ({share:.1%} > prepare.max_malformed_share {limit:.1%}): "
            f"{shown}. Fix the source, or raise the threshold to accept dropping them."
        )


def _deduplicate(rows: list[dict]) -> tuple[list[dict], int]:
    """Keep the first row per example id. (Equal question texts may stay within a set: generic stems such as
    MMLU's "Which of the following is true?" carry different choices.)"""
    seen, kept = set(), []
    for row in rows:
        if row["example_id"] not in seen:
            seen.add(row["example_id"])
            kept.append(row)
    return kept, len(rows) - len(kept)


def _without_overlap(records: dict[str, list[dict]], set_name: str) -> tuple[list[dict], int]:
    """Drop from `set_name` what an evaluation set also holds (evaluation sets are fixed benchmarks)."""
    ids = {r["example_id"] for name in EVAL_SETS for r in records[name]}
    questions = {r["question_hash"] for name in EVAL_SETS for r in records[name]}
    kept = [
        r for r in records[set_name] if r["example_id"] not in ids and r["question_hash"] not in questions
    ]
    return kept, len(records[set_name]) - len(kept)


def assert_no_overlap(frames: dict[str, pd.DataFrame]) -> None:
    for train in ("search", "shots"):
        for evaluation in EVAL_SETS:
            for column in ("example_id", "question_hash"):
                shared = set(frames[train][column]) & set(frames[evaluation][column])
                if shared:
                    raise PrepareError(
                        f"{train} and {evaluation} share {len(shared)} {column}s, e.g. {sorted(shared)[:3]}"
                    )


def _describe(frame: pd.DataFrame) -> dict:
    canonical = frame.sort_values("example_id").to_json(orient="records", force_ascii=False)
    return {
        "count": len(frame),
        "tasks": {task: int(n) for task, n in frame["task"].value_counts().sort_index().items()},
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
    }
