"""Ray's experiment state is saved without racing its upload, the final save is read back, Ray's
messages reach the quiet console as one line, and a finished search resumes to a no-op."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

from search.cli import main
from search.experiment import ray_state
from search.experiment.store import ExperimentStore
from tests.test_search_e2e import write_space


def _state_file(folder: Path, session: str, statuses: list[str]) -> None:
    """An experiment_state file as Ray writes it: trial_data holds [trial JSON, runtime metadata] pairs."""
    trials = [[json.dumps({"trial_id": f"t{i}", "status": s, "config": {}}), "{}"] for i, s in enumerate(statuses)]
    (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": trials}))


def test_finished_reads_the_newest_state_by_name_and_needs_every_trial_terminated(tmp_path: Path):
    store = ExperimentStore(tmp_path)
    assert ray_state.finished(store, 2) is None  # no state yet
    _state_file(tmp_path, "2026-01-01_10-00-00", ["TERMINATED", "TERMINATED"])
    _state_file(tmp_path, "2026-01-01_09-00-00", ["RUNNING", "PENDING"])  # an older driver's, written later
    assert ray_state.finished(store, 2) == 2
    assert ray_state.finished(store, 3) is None  # the searcher still owes a trial
    _state_file(tmp_path, "2026-01-01_11-00-00", ["TERMINATED", "RUNNING"])
    assert ray_state.finished(store, 2) is None
    (tmp_path / "experiment_state-2026-01-01_12-00-00.json").write_text('{"trial_da')  # caught mid-write
    assert [r["status"] for r in ray_state.trial_records(store)] == ["TERMINATED", "RUNNING"]


def test_a_ladder_is_finished_when_both_phases_are(tmp_path: Path):
    store = ExperimentStore(tmp_path)
    _state_file(tmp_path, "2026-01-01_10-00-00", ["TERMINATED"])  # the start phase's experiment
    (tmp_path / "fine_tune").mkdir()
    assert ray_state.finished(store, 3, ("fine_tune",)) is None  # the fine-tune phase has not begun
    _state_file(tmp_path / "fine_tune", "2026-01-01_10-05-00", ["TERMINATED", "RUNNING"])
    assert ray_state.finished(store, 3, ("fine_tune",)) is None
    _state_file(tmp_path / "fine_tune", "2026-01-01_10-06-00", ["TERMINATED", "TERMINATED"])
    assert ray_state.finished(store, 3, ("fine_tune",)) == 3
    assert ray_state.finished(store, 3) is None  # the start phase alone is not the search


def test_a_final_save_that_reads_back_different_is_uploaded_again(tmp_path: Path):
    from search.tuning.state_save import session_files, verify_final_save

    staging, stored = tmp_path / "driver_artifacts", tmp_path / "experiment"
    staging.mkdir()
    stored.mkdir()
    _state_file(staging, "2026-01-01_10-00-00", ["TERMINATED"])
    (staging / "basic-variant-state-2026-01-01_10-00-00.json").write_text("{}")
    (staging / ".1234-tmp-basic-variant-state-2026-01-01_10-00-00.json").write_text("{")  # a temporary: never
    (staging / "lic_search.json").write_text("{}")  # not Ray's save: left alone
    _state_file(stored, "2026-01-01_10-00-00", ["RUNNING"])  # what a failed upload left behind
    assert [p.name for p in session_files(staging)] == ["basic-variant-state-2026-01-01_10-00-00.json",
                                                       "experiment_state-2026-01-01_10-00-00.json"]
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(stored),
                              experiment_driver_staging_path=str(staging))
    assert verify_final_save(storage)
    assert ray_state.finished(ExperimentStore(stored), 1) == 1
    assert sorted(p.name for p in stored.iterdir()) == ["basic-variant-state-2026-01-01_10-00-00.json",
                                                        "experiment_state-2026-01-01_10-00-00.json"]


def test_a_ray_error_with_a_traceback_is_one_line_that_says_what_it_means():
    from search.monitor.console import OneLineRayLog

    try:
        raise FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/x/.1-tmp-basic-variant-state.json'")
    except FileNotFoundError:
        record = logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, "experiment_state.py", 176,
                                   "Saving experiment state to storage at '%s' failed with exception: ",
                                   ("/r/quickstart",), sys.exc_info())
    line = OneLineRayLog().format(record)
    assert "\n" not in line and "Traceback" not in line and "ERROR" not in line
    assert line.startswith("lic-search: Ray error: Saving experiment state to storage at '/r/quickstart' failed")
    assert "(FileNotFoundError: [Errno 2] Failed to open local file" in line
    assert line.endswith("the final one is checked")
    warning = logging.LogRecord("ray.train._internal.syncer", logging.WARNING, "syncer.py", 1,
                                "Last sync command failed with the following error:\nTraceback (most recent call "
                                "last):\n  File 'x', line 1\nOSError: disk full", (), None)
    assert OneLineRayLog().format(warning) == ("lic-search: Ray warning: Last sync command failed with the following "
                                               "error (OSError: disk full) — an upload of the search's state failed; "
                                               "the next save uploads it again")


@pytest.mark.slow
def test_ten_tiny_searches_end_with_clean_consoles_final_states_and_no_op_resumes(tmp_path: Path, ray_cluster,
                                                                                 capfd, monkeypatch):
    """A save at every step of Ray's loop (``TUNE_GLOBAL_CHECKPOINT_S=0``) makes the save/upload race of
    ray-project/ray#41362 likely in each search; none may show, and every stored state must be final."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results"
    for index in range(10):
        name = f"stress{index}"
        space = write_space(tmp_path, name, {"model.auxt.enabled": False, "schedule.iterations": 2,
                                             "schedule.eval_every": 2, "data.max_eval_images": 1}, {}, {"type": "fifo"})
        assert main(["run", str(space), "--storage-path", str(results), "--tracking-uri", uri]) == 0
        folder = results / name
        run = capfd.readouterr()
        console = run.out + run.err
        assert "Traceback" not in console and "ERROR" not in console and "lic-search: Ray " not in console, console
        records = ray_state.trial_records(ExperimentStore(folder))
        assert [r["status"] for r in records] == ["TERMINATED"], (name, records)
        states = {p.name: p.read_bytes() for p in folder.glob("experiment_state-*.json")}
        results_lines = [p.read_text().count("\n") for p in folder.glob("*/result.json")]

        assert main(["resume", str(folder)]) == 0
        resumed = capfd.readouterr()
        assert f"search '{name}' finished: all 1 trials ended" in resumed.out and "nothing to train" in resumed.out
        assert "Traceback" not in resumed.err and "ERROR" not in resumed.err
        assert {p.name: p.read_bytes() for p in folder.glob("experiment_state-*.json")} == states  # no new session
        assert [p.read_text().count("\n") for p in folder.glob("*/result.json")] == results_lines  # nothing trained

    assert main(["status", str(folder)]) == 0
    assert "The search finished: all 1 trials ended; resuming it trains nothing." in capfd.readouterr().out


class _SlowDisk:
    """A local folder behind a filesystem that takes 0.2 s per file written: an upload in flight for a while."""

    def __new__(cls):
        import time

        from fsspec.implementations.local import LocalFileSystem

        class Slow(LocalFileSystem):
            def _open(self, path, mode="rb", **kwargs):
                if "w" in mode:
                    time.sleep(0.2)
                return super()._open(path, mode=mode, **kwargs)

        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(Slow()))


def _saves_during_uploads(tmp_path: Path, sync_up) -> list[bool]:
    """Three saves in a row through Ray's experiment-state saver; for each, whether an upload was in flight."""
    from ray.train._internal.storage import _FilesystemSyncer
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.utils.util import _atomic_save

    staging, target = tmp_path / "driver_artifacts", tmp_path / "experiment"
    staging.mkdir(parents=True)
    target.mkdir()
    syncer = _FilesystemSyncer(storage_filesystem=_SlowDisk())
    storage = SimpleNamespace(experiment_driver_staging_path=str(staging), experiment_fs_path=str(target),
                              storage_filesystem=syncer.storage_filesystem, syncer=syncer)
    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period=0)
    in_flight = []

    def save() -> None:  # what TuneController.save_to_dir does: the trials in place, the searcher through a temporary
        in_flight.append(bool(syncer._sync_process and syncer._sync_process.is_running))
        _state_file(staging, "2026-01-01_10-00-00", ["RUNNING"])
        _atomic_save({"n": len(in_flight)}, str(staging), "searcher-state-2026-01-01_10-00-00.pkl", "tmp-searcher")

    for _ in range(3):
        sync_up(manager, save)
    sync_up(manager, save, force=True, wait=True)
    return in_flight


def test_each_save_waits_for_the_upload_ray_left_running(tmp_path: Path):
    """The cause (Ray 2.60 as released): its saver rewrites the staging folder while its last upload of
    that folder still runs. With state_save installed no save starts before the upload ends."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from search.tuning import state_save

    state_save.install()
    patched = _ExperimentCheckpointManager.sync_up_experiment_state
    assert any(_saves_during_uploads(tmp_path / "ray", patched.__wrapped__))
    assert not any(_saves_during_uploads(tmp_path / "patched", patched))
    assert ray_state.finished(ExperimentStore(tmp_path / "patched" / "experiment"), 1) is None  # RUNNING, as saved
