"""Ray Tune's saved experiment state in the experiment folder: each trial's record and status.

Ray writes ``experiment_state-<session>.json`` (one per driver session) beside lic-search's own
files; ``status`` shows it and ``resume`` decides from it whether anything is left to train.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Optional, Sequence

import pyarrow.fs

from search.experiment.ray_internals import EXPERIMENT_STATE_PATTERN
from search.experiment.store import ExperimentStore

STATE_PATTERN = EXPERIMENT_STATE_PATTERN  # Ray's TuneController.CKPT_FILE_TMPL
TERMINATED = "TERMINATED"  # Ray's status of a trial that ended (budget done, or stopped by the scheduler)


def state_files(store: ExperimentStore) -> list[str]:
    """Ray's experiment-state files, oldest first by the timestamp in their names."""
    try:
        infos = store.fs.get_file_info(pyarrow.fs.FileSelector(store.path))
    except (OSError, pyarrow.ArrowException):
        return []
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.File
                  and fnmatch.fnmatch(i.base_name, STATE_PATTERN))


def trial_records(store: ExperimentStore) -> list[dict]:
    """Ray's latest saved trial records: status, trial_id, config, relative_logdir.

    The latest is the newest by the timestamp in its name, as Ray itself picks it on restore
    (``_find_newest_experiment_checkpoint``): Ray syncs a restored folder back now and then, so a
    dead driver's older state file can carry a newer mtime than the resumed search's."""
    names = state_files(store)
    for name in reversed(names[-2:]):  # caught mid-write: the previous one is as good
        try:
            data = json.loads(store.read_text(name))
        except (OSError, ValueError, pyarrow.ArrowException):
            continue
        return [json.loads(entry[0]) for entry in data.get("trial_data", [])]
    return []


def finished(store: ExperimentStore, expected: int, phases: Sequence[str] = ()) -> Optional[int]:
    """The number of trials when the saved state holds at least ``expected`` trials, every one
    terminated (nothing left for ``resume`` to train); None otherwise. ``phases``: folders inside
    ``store`` that are Ray experiments of the same search too (a ladder's fine-tune phase)."""
    records = [r for s in [store, *(store.child(p) for p in phases)] for r in trial_records(s)]
    if len(records) < max(expected, 1) or any(r.get("status") != TERMINATED for r in records):
        return None
    return len(records)


__all__ = ["state_files", "trial_records", "finished", "STATE_PATTERN", "TERMINATED"]
