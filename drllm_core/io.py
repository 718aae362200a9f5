"""Atomic file writes: a reader (or a crash) never sees a half-written output.

A file is written beside its target and renamed over it. A folder is written beside its target and swapped
with it in one exchange (Linux renameat2), so the old or the new folder is in place at every instant, also
for concurrent writers; temporary folders that a crashed writer left behind are removed by the next one.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import yaml


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_with(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Atomically write `path` with a function that writes to the path it is given (e.g. df.to_parquet)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, payload) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    def writer(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)

    return write_with(path, writer)


def repository_root(start: Path | None = None) -> Path:
    """The project root: the folder above `.dvc/tmp/exps/...` in a temporary experiment, else the nearest
    folder holding dvc.yaml, else the current folder. Relative project paths (the MLflow store, the model
    cache) are anchored here, so a command run from a subfolder or a DVC experiment uses the same files."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def read_yaml(path: str | Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def read_json(path: str | Path):
    with open(path) as handle:
        return json.load(handle)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary folder beside `path`; on success it takes the place of `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        _swap_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the old folder


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _remove_orphans(path: Path) -> None:
    """Temporary folders of `path` whose writer (the pid in their name) no longer runs."""
    for orphan in path.parent.glob(f"{_tmp_prefix(path)}*"):
        pid = orphan.name.removeprefix(_tmp_prefix(path)).split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(orphan, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _swap_into_place(new: Path, path: Path) -> None:
    """Put `new` at `path`; what was at `path` ends up at `new` (deleted by the caller)."""
    try:
        os.rename(new, path)  # nothing there yet (or an empty folder): one rename
        new.mkdir()  # the caller's clean-up expects a folder at `new`
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the file system cannot exchange
            raise OSError(code, os.strerror(code), str(path))
    # No atomic exchange here (another OS, an old kernel): two renames, briefly without `path`.
    old = new.with_name(f"{new.name}-old")
    os.rename(path, old)
    os.rename(new, path)
    os.rename(old, new)
