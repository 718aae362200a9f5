"""Append-only, crash-safe record of finished work: one JSON line per item, flushed and fsynced.

Long stages (search, evaluate) write each finished item here as soon as it is done; after a crash or a kill
a re-run reads the file back and skips what is there. A line torn by a crash is dropped on reading (and the
file rewritten without it), so nothing is half-counted; items are keyed by id, so nothing is duplicated.
The file name (checkpoint_path) carries a hash of everything the results depend on and of the code that
computed them (drllm_core.provenance), so results computed under other parameters, another model, other data
or other code are never reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

from drllm_core import io
from drllm_core.errors import DrllmError

log = logging.getLogger(__name__)


def content_key(*parts) -> str:
    """A short hash of JSON-serialisable parts (parameters, model fingerprint, data hash...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_path(folder: str | Path, name: str, key: str, code: str) -> Path:
    """Where the checkpoint of `name` under content key `key` lives for the code version `code`
    (drllm_core.provenance.code_version of the stage); says so when the same work was checkpointed by other
    code (not resumed: a code change can change results)."""
    path = Path(folder) / f"{name}-{key}-code{code}.jsonl"
    others = sorted(p.name for p in Path(folder).glob(f"{name}-{key}-code*.jsonl") if p != path)
    if others:
        log.warning(
            "not resuming %s, written by other code: starting afresh in %s", ", ".join(others), path.name
        )
    return path


class CheckpointBusy(DrllmError):
    pass


class Checkpoint:
    """One writer at a time: a second process opening the same checkpoint is refused (it would redo the
    work and append duplicates), until the first one closes it or dies."""

    def __init__(self, path: str | Path, id_field: str = "example_id"):
        self.path = Path(path)
        self.id_field = id_field
        self.records: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise CheckpointBusy(
                f"another process is writing the checkpoint {self.path} (the same work, right now): wait for it "
                "to finish or stop it, then run again; this run would only repeat its work"
            ) from None
        self._load()
        self._handle = open(self.path, "a")  # noqa: SIM115 - kept open for the life of the checkpoint

    def _load(self) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        torn = False
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn = True
                continue
            self.records.setdefault(record[self.id_field], record)
        if torn:  # rewrite without the torn line, atomically
            io.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records.values()))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def add(self, record: dict) -> None:
        item_id = record[self.id_field]
        if item_id in self.records:
            return
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records[item_id] = record

    def close(self) -> None:
        self._handle.close()
        self._lock.close()  # releases the lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
