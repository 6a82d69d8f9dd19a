"""Ray Tune's experiment state: saved without racing its own upload, and the final save checked.

Ray Tune (2.40 to 2.60) saves the experiment state (each trial's status, the search algorithm's
and the callbacks' state) into a local staging folder, ``driver_artifacts``, and a background
thread uploads that folder to the experiment folder, whatever the storage (a local folder is
copied too). The next save rewrites the staging folder without waiting for an upload still
running: the search algorithm's state goes through a temporary file renamed over the old one, so
an upload that listed the folder a moment before fails on the vanished temporary
(``FileNotFoundError``: Ray's ERROR and traceback, as in ray-project/ray#41362), and the trial
statuses file, rewritten in place, can be copied half written. No Ray setting orders the two
(``SyncConfig`` paces trial uploads, ``TUNE_GLOBAL_CHECKPOINT_S`` only spaces the saves), so
:func:`install` makes each save wait for the previous upload first, for every storage (local
folder, shared filesystem, ``s3://``). The search's last save (Ray's forced, waited one at the end
of ``Tuner.fit``, Ctrl-C included) is then read back from storage and uploaded again until it
matches what was staged (:func:`verify_final_save`): ``status`` and ``resume`` read that file.

The private Ray members used here come through search/experiment/ray_internals.py; tests/test_library_contract.py
checks their behaviour.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Optional

from search.experiment import ray_internals
from search.experiment.ray_state import STATE_PATTERN

logger = logging.getLogger("lic_search.state_save")
FINAL_TRIES = 3  # uploads of a final save that read back different before giving up (with a warning)


def install() -> None:
    """Patch Ray's experiment-state saver, once per process (the driver's: run and resume call it)."""
    Manager = ray_internals.experiment_checkpoint_manager()
    original = Manager.sync_up_experiment_state
    if getattr(original, "_lic_search", False):
        return

    @functools.wraps(original)
    def sync_up_experiment_state(self, save_fn, force: bool = False, wait: bool = False):
        def save_after_upload() -> None:  # Ray calls it only when a save is due
            finish_upload(ray_internals.manager_storage(self))
            save_fn()

        original(self, save_after_upload, force=force, wait=wait)
        if force and wait:
            verify_final_save(ray_internals.manager_storage(self))

    sync_up_experiment_state._lic_search = True  # type: ignore[attr-defined]
    Manager.sync_up_experiment_state = sync_up_experiment_state


def finish_upload(storage: Any) -> None:
    """Wait for the upload in flight; a failed one is said in one line (the next upload carries it all)."""
    try:
        ray_internals.wait_for_upload(storage)
    except Exception as error:  # noqa: BLE001 - the filesystem's errors; the next save uploads the folder again
        logger.warning("lic-search: an upload of the search's state to %s failed (%s: %s); the next save "
                       "uploads it again", ray_internals.experiment_location(storage)[1], type(error).__name__, error)


def session_files(staging: Path) -> list[Path]:
    """The files of the save just made: those named with the newest experiment state's session."""
    states = sorted(staging.glob(STATE_PATTERN), key=lambda p: p.stat().st_mtime)
    if not states:
        return []
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    return sorted(p for p in staging.iterdir() if p.is_file() and session in p.name and not p.name.startswith("."))


def _stored(fs: Any, path: str) -> Optional[bytes]:
    import pyarrow

    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, pyarrow.ArrowException):
        return None


def verify_final_save(storage: Any) -> bool:
    """Read the staged files back from storage; upload again those that differ (:data:`FINAL_TRIES` times)."""
    import pyarrow
    import pyarrow.fs

    fs, target = ray_internals.experiment_location(storage)
    files = session_files(Path(ray_internals.staging_folder(storage)))
    stale = files
    for attempt in range(FINAL_TRIES + 1):
        stale = [f for f in files if _stored(fs, f"{target}/{f.name}") != f.read_bytes()]
        if not stale or attempt == FINAL_TRIES:
            break
        time.sleep(0.2 * attempt)
        for file in stale:
            try:
                pyarrow.fs.copy_files(str(file), f"{target}/{file.name}", destination_filesystem=fs)
            except (OSError, pyarrow.ArrowException) as error:
                logger.debug("upload of %s failed: %s", file.name, error)
    if stale:
        logger.warning("lic-search: the search's final state could not be saved to %s (%s); `status` may show "
                       "trials still running and `resume` continues them from their last checkpoints",
                       target, ", ".join(f.name for f in stale))
    return not stale


__all__ = ["install", "verify_final_save", "finish_upload", "session_files"]
