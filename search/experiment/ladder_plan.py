"""The ladder's own file (``ladder.json``) in the experiment folder: what the anchor phase left for the fine-tunes.

Written once, when the anchor phase of a ladder search has ended: per rate family its anchor
trial, the anchor's final checkpoint (or why the family is not fine-tuned) and the configs of the
fine-tune phase. Its presence is the phase marker ``resume`` reads: without it the anchor phase
is restored; with it the anchors are done and never run again, and the fine-tune phase (its own
Ray experiment in :data:`FINE_TUNE_FOLDER`) is restored, or started when it had not begun.
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
    """One rate family: its anchor, and the checkpoint its other rate points start from (None: not fine-tuned)."""

    anchor_trial: str
    name: str  # readable family name (the distinguishing params)
    family: str  # family key (lic_search.family of the anchor's run)
    checkpoint: Optional[str] = None
    reason: str = ""  # why the family is not fine-tuned
    anchor_run: Optional[str] = None  # MLflow run id, when known (offline tracking: later)
    damaged: list[str] = field(default_factory=list)  # "path: problem" of newer anchor checkpoints passed over


@dataclass
class LadderPlan:
    families: list[LadderFamily] = field(default_factory=list)
    configs: list[dict] = field(default_factory=list)  # the fine-tune phase's trial configs, in order

    def save(self, store: ExperimentStore) -> None:
        store.write_text(PLAN_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, store: ExperimentStore) -> Optional["LadderPlan"]:
        """The plan, or None while the anchor phase has not ended."""
        if not store.exists(PLAN_FILE):
            return None
        data = json.loads(store.read_text(PLAN_FILE))
        return cls([LadderFamily(**family) for family in data.get("families", [])], list(data.get("configs", [])))

    def origin(self, checkpoint: str) -> Optional[LadderFamily]:
        """The family whose anchor checkpoint a fine-tuned trial starts from."""
        return next((f for f in self.families if f.checkpoint == checkpoint), None)

    def lines(self) -> list[str]:
        """One line per family: fine-tuned from which anchor, or why not."""
        return [f"  {f.name or f.anchor_trial}: " + (f"fine-tuned from anchor {f.anchor_trial}" if f.checkpoint
                                                     else f"not fine-tuned: anchor {f.anchor_trial} {f.reason}")
                + ("".join(f"; passed over damaged checkpoint {d}" for d in f.damaged) if f.damaged else "")
                for f in self.families]


__all__ = ["PLAN_FILE", "FINE_TUNE_FOLDER", "LadderFamily", "LadderPlan"]
