"""Unreadable training files, named: each trial's list in the experiment folder (``skipped_images/``).

A trial reports the files it skipped (``trainables.metrics.SKIPPED_FILES``: "path<TAB>reason" lines,
at most ``SKIPPED_FILES_LISTED``) whenever the list grows; the trial logger writes it here and as the
run's MLflow artifact ``skipped_images.txt``. The end-of-search summary and ``status`` name the first
few from here and say where the full lists are.
"""

from __future__ import annotations

from typing import Optional

from search.experiment.store import ExperimentStore

FOLDER = "skipped_images"
ARTIFACT = "skipped_images.txt"  # the same list on the trial's MLflow run
SHOWN = 3


def record(store: ExperimentStore, trial_id: str, text: str) -> None:
    store.write_text(f"{FOLDER}/{trial_id}.txt", text if text.endswith("\n") else text + "\n")


def skipped_files(store: ExperimentStore) -> dict[str, str]:
    """Each skipped file named by any trial (path -> reason), in trial then report order."""
    found: dict[str, str] = {}
    for name in store.list(FOLDER, "*.txt"):
        for line in store.read_text(f"{FOLDER}/{name}").splitlines():
            path, _, reason = line.partition("\t")
            if path:
                found.setdefault(path, reason)
    return found


def describe(store: ExperimentStore) -> Optional[str]:
    """The first few skipped files and where the full lists are; None when no trial named any."""
    found = skipped_files(store)
    if not found:
        return None
    shown = "; ".join(f"{path} ({reason})" for path, reason in list(found.items())[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return (f"unreadable training files: {shown}{more}; full lists: {store.location}/{FOLDER}/<trial>.txt "
            f"(and each trial's MLflow artifact {ARTIFACT})")
