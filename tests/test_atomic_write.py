"""State files of ours are replaced whole or not at all: a write cut short (an error, or the process killed midway)
leaves the previous file intact, on a local disk and on a remote (non-local pyarrow) filesystem alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs
import pytest

from search.experiment.atomic import write_file
from search.experiment.ladder_plan import PLAN_FILE, LadderFamily, LadderPlan
from search.experiment.store import ExperimentStore

KILLED_MIDWAY = """
import os, signal, sys
from search.experiment.atomic import write_file
from search.experiment.store import ExperimentStore

store = ExperimentStore(sys.argv[1])

def half_then_die(stream):
    stream.write(b'{"families": [{"start_trial": "cut')  # half of a plan...
    stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # ...and the process is gone (a crash, an OOM kill, a lost node)

write_file(store.fs, store.path + "/ladder.json", half_then_die)
"""


def _plan(trial: str) -> LadderPlan:
    return LadderPlan([LadderFamily(trial, "lr=0.001", "f1", f"/ckpt/{trial}")], [{"loss": {"lmbda": 0.01}}])


def test_a_ladder_json_write_killed_midway_leaves_the_previous_plan(tmp_path: Path):
    store = ExperimentStore(tmp_path / "exp")
    store.create()
    _plan("start_1").save(store)
    killed = subprocess.run([sys.executable, "-c", KILLED_MIDWAY, store.location], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert LadderPlan.load(store) == _plan("start_1")  # whole, and the one before the cut write
    _plan("start_2").save(store)  # the next write still works
    assert LadderPlan.load(store) == _plan("start_2")


def _memory_filesystem() -> pyarrow.fs.FileSystem:
    """A real non-local pyarrow filesystem (fsspec's in-memory one): writes go the remote way (temp object, move)."""
    fsspec = pytest.importorskip("fsspec")
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fsspec.filesystem("memory")))


@pytest.mark.parametrize("where", ["local", "remote"])
def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary_one(tmp_path: Path, where: str):
    filesystem = pyarrow.fs.LocalFileSystem() if where == "local" else _memory_filesystem()
    folder = str(tmp_path) if where == "local" else f"/atomic-{os.getpid()}"
    filesystem.create_dir(folder, recursive=True)
    target = f"{folder}/{PLAN_FILE}"
    write_file(filesystem, target, lambda stream: stream.write(b"previous"))

    def fails(stream):
        stream.write(b"half of the new")
        raise OSError("connection reset")  # remote storage went away mid-upload

    with pytest.raises(OSError, match="connection reset"):
        write_file(filesystem, target, fails)
    with filesystem.open_input_stream(target) as stream:
        assert stream.read() == b"previous"
    names = [info.base_name for info in filesystem.get_file_info(pyarrow.fs.FileSelector(folder))]
    assert names == [PLAN_FILE]  # the temporary file is gone too
    write_file(filesystem, target, lambda stream: stream.write(b"next"))
    with filesystem.open_input_stream(target) as stream:
        assert stream.read() == b"next"
