"""The ladder's own file (``ladder.json``) in the experiment folder: what the start phase left for the fine-tunes.

Written once, when the start phase of a ladder search has ended: per rate family its start-point
trial, that trial's final checkpoint (or why the family is not fine-tuned) and the configs of the
fine-tune phase. Its presence is the phase marker ``resume`` reads: without it the start phase
is restored; with it the start points are done and never run again, and the fine-tune phase (its
own Ray experiment in :data:`FINE_TUNE_FOLDER`) is restored, or started when it had not begun.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from search.experiment.store import ExperimentStore

PLAN_FILE = "ladder.json"
FINE_TUNE_FOLDER = "fine_tune"  # the fine-tune phase's Ray experiment, inside the search's experiment folder


@dataclass
class LadderFamily:
    """One rate family: its start point's trial, and the checkpoint its other rate points start from
    (None: not fine-tuned)."""

    start_trial: str
    name: str  # readable family name (the distinguishing params)
    family: str  # family key (lic_search.family of the start point's run)
    checkpoint: Optional[str] = None
    reason: str = ""  # why the family is not fine-tuned
    start_run: Optional[str] = None  # MLflow run id, when known (offline tracking: later)
    damaged: list[str] = field(default_factory=list)  # "path: problem" of newer start-point checkpoints passed over


def _renamed(family: dict) -> dict:
    """A family as stored, under today's field names.

    Compatibility shim: a ``ladder.json`` written before ``ladder.anchor`` became ``ladder.start``
    names the fields ``anchor_trial`` and ``anchor_run``; such a search still resumes."""
    old = {"anchor_trial": "start_trial", "anchor_run": "start_run"}
    return {old.get(key, key): value for key, value in family.items()}


@dataclass
class LadderPlan:
    families: list[LadderFamily] = field(default_factory=list)
    configs: list[dict] = field(default_factory=list)  # the fine-tune phase's trial configs, in order

    def save(self, store: ExperimentStore) -> None:
        store.write_text(PLAN_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, store: ExperimentStore) -> Optional["LadderPlan"]:
        """The plan, or None while the start phase has not ended."""
        if not store.exists(PLAN_FILE):
            return None
        data = json.loads(store.read_text(PLAN_FILE))
        return cls([LadderFamily(**_renamed(family)) for family in data.get("families", [])],
                   list(data.get("configs", [])))

    def origin(self, checkpoint: str) -> Optional[LadderFamily]:
        """The family whose start-point checkpoint a fine-tuned trial starts from."""
        return next((f for f in self.families if f.checkpoint == checkpoint), None)

    def lines(self) -> list[str]:
        """One line per family: fine-tuned from which start point, or why not."""
        return [f"  {f.name or f.start_trial}: " + (f"fine-tuned from start point {f.start_trial}" if f.checkpoint
                                                    else f"not fine-tuned: start point {f.start_trial} {f.reason}")
                + ("".join(f"; passed over damaged checkpoint {d}" for d in f.damaged) if f.damaged else "")
                for f in self.families]


__all__ = ["PLAN_FILE", "FINE_TUNE_FOLDER", "LadderFamily", "LadderPlan"]
