"""Atomic outputs: a folder is swapped in one exchange, so readers and concurrent writers always find a whole
old or new folder, and temporary folders of crashed writers are removed by the next writer."""

import os
import threading

from drllm_core import io


def test_a_folder_is_always_in_place_while_writers_replace_it(tmp_path):
    target = tmp_path / "out"
    with io.atomic_dir(target) as tmp:
        (tmp / "value").write_text("0")
    missing, errors, stop = [], [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                if not (target / "value").read_text():
                    missing.append("empty")
            except FileNotFoundError:
                missing.append("absent")

    def write(writer):
        try:
            for round_ in range(50):
                with io.atomic_dir(target) as tmp:
                    (tmp / "value").write_text(f"{writer}-{round_}")
        except OSError as err:  # concurrent writers must not crash (ENOTEMPTY before)
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert not errors and not missing
    assert (target / "value").read_text() in {"0-49", "1-49"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind


def test_a_crashed_writers_temporary_folder_is_removed_by_the_next_writer(tmp_path):
    dead = tmp_path / ".out.tmp-999999999-abc"  # a pid no process has
    alive = tmp_path / f".out.tmp-{os.getpid()}-def"  # a writer still running (this test)
    dead.mkdir()
    alive.mkdir()
    with io.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "value").write_text("1")
    assert not dead.exists() and alive.exists() and (tmp_path / "out" / "value").read_text() == "1"
