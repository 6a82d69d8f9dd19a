"""The search's own state file (``lic_search.json``) and the resolved space copy, beside Ray's state in the
experiment folder: what ``resume``, ``status`` and ``sync`` read to find the space, MLflow store and parent run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from search.errors import LicSearchError
from search.experiment.store import ExperimentStore

STATE_FILE = "lic_search.json"
SPACE_COPY = "space.yaml"


@dataclass
class SearchState:
    """What ``resume`` needs, stored beside Ray's own state in the experiment folder."""

    name: str
    tracking_uri: str
    parent_run_id: str
    space_file: str = SPACE_COPY  # the resolved copy, relative to the experiment folder

    def save(self, store: ExperimentStore) -> None:
        store.write_text(STATE_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, store: ExperimentStore) -> "SearchState":
        if not store.exists(STATE_FILE):
            raise LicSearchError(f"{store} is not a lic-search experiment folder (no {STATE_FILE}); "
                                 "pass the folder `lic-search run` printed, e.g. lic_search_results/<name>")
        state = json.loads(store.read_text(STATE_FILE))
        state["space_file"] = Path(state.get("space_file", SPACE_COPY)).name
        return cls(**state)
