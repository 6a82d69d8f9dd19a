"""Which of a ladder's fine-tunes ended because their rate settled (``ladder.settle``), kept in the fine-tune phase's
folder as ``settled.json`` (``{trial id: why}``).

Ray records such a trial as TERMINATED before its budget, like one a scheduler stopped early; this file is what
tells ``status`` (and the live view) that it completed. Replaced whole at each write (``store.write_text``)."""

from __future__ import annotations

import json

from search.experiment.store import ExperimentStore

SETTLED_FILE = "settled.json"


def load(phase: ExperimentStore) -> dict[str, str]:
    """``{trial id: why it settled}`` of the phase (empty when none settled, or for a phase without the rule)."""
    if not phase.exists(SETTLED_FILE):
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(phase.read_text(SETTLED_FILE)).items()}
    except (ValueError, AttributeError):
        return {}


def save(phase: ExperimentStore, reasons: dict[str, str]) -> None:
    phase.create()
    phase.write_text(SETTLED_FILE, json.dumps(reasons, indent=1, sort_keys=True))


__all__ = ["SETTLED_FILE", "load", "save"]
