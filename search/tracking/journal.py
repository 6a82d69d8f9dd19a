"""The tracking journal: every MLflow record of a search, appended to the experiment folder first.

The driver never waits for the tracking server: :class:`search.tracking.client.MlflowTrialLogger`
appends records here and :class:`search.tracking.sender.Sender` ships them in order. Two files:

- ``tracking_journal.jsonl``: append-only JSON lines, one record each, numbered by ``seq``
  (0, 1, 2, ...). Records name trials by their Ray Tune trial id (``trial``; ``None`` is the
  search's parent run), never by MLflow run id: a trial that starts during an outage gets its
  run created when the server is back.
- ``tracking_shipped.json``: how far the journal is in MLflow (``shipped``: records
  ``0 .. shipped-1``) and the run ids created so far (trial id -> run id, ``""`` the parent).

A journal without a store lives in memory only (tests and direct, synchronous logging).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator, Optional

from search.experiment.store import ExperimentStore, is_uri

JOURNAL_FILE = "tracking_journal.jsonl"
SHIPPED_FILE = "tracking_shipped.json"
PARENT = ""  # key of the search's parent run in the run map

# Record operations (``op``)
CREATE_SEARCH = "create_search"  # the parent run: experiment, run_name, tags, text (space.yaml)
CREATE_RUN = "create_run"  # a trial's run: tags, params, text (trial_config.yaml)
BATCH = "batch"  # metrics [[key, value, timestamp_ms, step], ...] and/or tags {key: value}; text at artifact
STATUS = "status"  # run status RUNNING | FINISHED | FAILED | KILLED, at ``time`` (ms)
ARTIFACTS = "artifacts"  # a local folder logged under ``artifact_path`` (the report); replays overwrite
SUMMARY = "summary"  # the parent run's end-of-search summary: text at artifact, tags, metrics, note, experiment_tags
#: Stands for the parent run's id in a SUMMARY's ``note`` and ``experiment_tags`` (keys and values; a search
#: started offline has none yet).
PARENT_RUN_PLACEHOLDER = "<parent run id>"


class Journal:
    """Append-only records plus the durable shipped offset; safe to share between threads."""

    def __init__(self, store: Optional[ExperimentStore] = None):
        self.store = store
        self._lock = threading.Condition()
        self._records: list[dict] = []
        self._text = ""  # the file's content, for stores that cannot append (object stores)
        self.shipped = 0
        self.run_ids: dict[str, str] = {}
        if store is not None:
            self._load()

    # ---------------------------------------------------------------- files
    @property
    def durable(self) -> bool:
        return self.store is not None

    @property
    def location(self) -> str:
        return f"{self.store}/{JOURNAL_FILE}" if self.store is not None else "<memory>"

    def _load(self) -> None:
        if self.store.exists(JOURNAL_FILE):
            text = self.store.read_text(JOURNAL_FILE)
            lines = text.splitlines()
            for number, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    self._records.append(json.loads(line))
                except json.JSONDecodeError:
                    if number < len(lines) - 1:
                        raise
                    # a line cut short by a crash mid-append (never acknowledged): drop it from the file too,
                    # or the next record would be appended to it
            self._text = "".join(json.dumps(r) + "\n" for r in self._records)
            if self._text != text:
                self.store.write_text(JOURNAL_FILE, self._text)
        if self.store.exists(SHIPPED_FILE):
            state = json.loads(self.store.read_text(SHIPPED_FILE))
            self.shipped = min(int(state.get("shipped", 0)), len(self._records))
            self.run_ids = {str(k): str(v) for k, v in (state.get("runs") or {}).items()}

    def _append_line(self, line: str) -> None:
        path = f"{self.store.path}/{JOURNAL_FILE}"
        if not is_uri(self.store.location):
            with open(path, "a", encoding="utf-8") as stream:
                stream.write(line)
                stream.flush()
            return
        try:
            with self.store.fs.open_append_stream(path) as stream:
                stream.write(line.encode())
        except NotImplementedError:  # object stores (s3, gs): rewrite; every write replaces it atomically
            self.store.write_text(JOURNAL_FILE, self._text)

    def create(self) -> None:
        """Make the (empty) journal file exist: a resumed search then trusts it as the full record."""
        if self.store is not None and not self.store.exists(JOURNAL_FILE):
            self.store.write_text(JOURNAL_FILE, self._text)

    def exists(self) -> bool:
        return self.store is not None and self.store.exists(JOURNAL_FILE)

    # -------------------------------------------------------------- records
    def append(self, op: str, trial: Optional[str], **fields: Any) -> dict:
        """Write one record durably, then wake the sender. Returns the record."""
        with self._lock:
            record = {"seq": len(self._records), "op": op, "trial": trial, **fields}
            line = json.dumps(record) + "\n"
            self._text += line
            if self.store is not None:
                self._append_line(line)
            self._records.append(record)
            self._lock.notify_all()
        return record

    def records(self, start: int = 0) -> list[dict]:
        with self._lock:
            return list(self._records[start:])

    def trial_records(self, trial: str) -> Iterator[dict]:
        return (r for r in self.records() if r.get("trial") == trial)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._records) - self.shipped

    def wait_for_records(self, timeout: float) -> bool:
        """Block until a record is pending or ``timeout`` passed; True when one is pending."""
        with self._lock:
            if len(self._records) > self.shipped:
                return True
            self._lock.wait(timeout)
            return len(self._records) > self.shipped

    def mark_shipped(self, upto: int, run_ids: Optional[dict[str, str]] = None) -> None:
        """Records ``0 .. upto-1`` are in MLflow: remember it durably (before the next batch goes)."""
        with self._lock:
            self.shipped = max(self.shipped, upto)
            if run_ids:
                self.run_ids.update(run_ids)
            state = json.dumps({"shipped": self.shipped, "runs": self.run_ids}, indent=1)
        if self.store is not None:
            self.store.write_text(SHIPPED_FILE, state)  # atomic, local or remote

    def remember_run(self, trial: str, run_id: str) -> None:
        self.mark_shipped(self.shipped, {trial: run_id})
