"""Ships the tracking journal to MLflow: in order, batched, retried with backoff, never twice.

A background thread (:meth:`Sender.start`) keeps the driver's result loop free of MLflow
calls; ``lic-search sync`` and resume use :meth:`Sender.ship_pending` directly. Idempotence:

- runs are found by their tags (trial id + parent run) before one is created, so replaying a
  ``create_run`` after a crash or a lost answer finds the run instead of making a second one;
- metric points are identified by (key, step, timestamp): the first batch of a run after the
  sender starts, and any batch after a failed request (it may have landed), is checked
  against the run's history and points MLflow already has are dropped;
- params, tags, status and the config artifact are overwrites of the same values.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from search.tracking import journal as J
from search.tracking import names as T
from search.tracking.client import client_for, ensure_experiment
from search.tracking.filters import exact, tags_filter

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits
EXPERIMENT_NOTE_TAG = "mlflow.note.content"  # the experiment's description in the MLflow UI
# Refusals that no retry can change: the record is reported and skipped instead of blocking the queue.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "INVALID_STATE"}


def is_permanent(error: BaseException) -> bool:
    return getattr(error, "error_code", None) in PERMANENT_ERRORS


class Sender:
    """Replays a :class:`search.tracking.journal.Journal` into MLflow for one search."""

    def __init__(self, journal: J.Journal, tracking_uri: str, experiment: str, parent_run_id: Optional[str],
                 client_factory: Optional[Callable] = None, notify: Callable[[str], None] = print,
                 backoff: tuple[float, float] = (1.0, 30.0), sleep: Optional[Callable[[float], None]] = None):
        self.journal = journal
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        if parent_run_id:
            journal.run_ids.setdefault(J.PARENT, parent_run_id)
        self._client_factory = client_factory
        self._client = None
        self._notify = notify
        self._backoff = backoff
        self._wake = threading.Event()  # cuts a backoff short: close() retries at once
        self._sleep = sleep or self._wake.wait
        self._verified: set[str] = set()  # runs whose history was checked since this sender started
        self._experiment_id: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.down_since: Optional[float] = None  # set while the server does not answer
        self.last_error: Optional[BaseException] = None
        self.skipped: list[tuple[dict, str]] = []  # records MLflow refused for good, with the reason

    @property
    def client(self):
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:

                self._client = client_for(self.tracking_uri)
        return self._client

    @property
    def parent_run_id(self) -> Optional[str]:
        return self.journal.run_ids.get(J.PARENT)

    # ------------------------------------------------------------ shipping
    def ship_pending(self, deadline: Optional[float] = None,
                     on_shipped: Optional[Callable[[int], None]] = None) -> int:
        """Ship every pending record (until ``deadline``); raises what MLflow raised. Returns how many.
        ``on_shipped`` hears how many records each call to MLflow shipped (a command's progress)."""
        shipped = 0
        while deadline is None or time.time() < deadline:
            records = self.journal.records(self.journal.shipped)
            if not records:
                break
            group = self._group(records)
            try:
                self._ship(group)
            except Exception as error:  # noqa: BLE001 - any failure: MLflow's, the network's
                if not is_permanent(error):
                    for record in group:
                        self._verified.discard(str(record.get("trial")))  # it may have landed
                    raise
                self._notify(f"lic-search: MLflow refused journal record {group[0]['seq']} "
                             f"({group[0]['op']} of trial {group[0]['trial']}): {error}; skipped")
                self.skipped.append((group[0], str(error)))
                group = group[:1]
            self.journal.mark_shipped(group[-1]["seq"] + 1)
            shipped += len(group)
            if on_shipped is not None:
                on_shipped(len(group))
        return shipped

    def _group(self, records: list[dict]) -> list[dict]:
        """The next call's records: consecutive batches of one trial within log_batch limits, else one."""
        first = records[0]
        if first["op"] != J.BATCH:
            return [first]
        group, metrics, tags = [], 0, 0
        for record in records:
            if record["op"] != J.BATCH or record["trial"] != first["trial"]:
                break
            m, t = len(record.get("metrics") or []), len(record.get("tags") or {})
            if group and (metrics + m > MAX_METRICS or tags + t > MAX_TAGS):
                break
            group.append(record)
            metrics, tags = metrics + m, tags + t
        return group

    def _ship(self, group: list[dict]) -> None:
        first = group[0]
        if first["op"] == J.CREATE_SEARCH:
            self._create_search(first)
        elif first["op"] == J.CREATE_RUN:
            self._create_run(first)
        elif first["op"] == J.STATUS:
            run_id = self._run_of(first)
            if first["status"] == "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            else:
                self.client.set_terminated(run_id, status=first["status"], end_time=first.get("time"))
        elif first["op"] == J.BATCH:
            self._log_batch(group)
        elif first["op"] == J.SUMMARY:
            self._summary(first)
        elif first["op"] == J.ARTIFACTS:
            self.client.log_artifacts(self._run_of(first), first["folder"], artifact_path=first["artifact_path"])
        else:
            raise ValueError(f"{self.journal.location}: record {first['seq']} has unknown op {first['op']!r}")

    def _experiment(self) -> str:
        if self._experiment_id is None:

            self._experiment_id = ensure_experiment(self.client, self.experiment)
        return self._experiment_id

    def _find(self, tags: dict[str, str]) -> Optional[str]:
        found = exact(self.client.search_runs([self._experiment()], filter_string=tags_filter(tags), max_results=50),
                      tags)
        return found[0].info.run_id if found else None

    def _create_search(self, record: dict) -> None:
        if self.parent_run_id:
            return
        tags = record["tags"]
        run_id = self._find({T.TAG_ROLE: T.ROLE_SEARCH, T.TAG_SEARCH_DIR: tags[T.TAG_SEARCH_DIR]})
        if run_id is None:
            run_id = self.client.create_run(self._experiment(), run_name=record.get("run_name"), tags=tags).info.run_id
        self.journal.remember_run(J.PARENT, run_id)
        if record.get("text") is not None:
            self.client.log_text(run_id, record["text"], record["artifact"])

    def _create_run(self, record: dict) -> None:
        from mlflow.entities import Param

        trial = record["trial"]
        parent = self.parent_run_id
        if parent is None:
            raise RuntimeError("the search's parent run is not in MLflow yet")
        run_id = self.journal.run_ids.get(trial) or self._find({T.TAG_TRIAL_ID: trial, T.TAG_PARENT: parent})
        if run_id is None:
            tags = {**record["tags"], T.TAG_PARENT: parent}
            run_id = self.client.create_run(self._experiment(), run_name=record.get("run_name"),
                                            tags=tags).info.run_id
            self._verified.add(trial)  # a new run has no history to check
        self.journal.remember_run(trial, run_id)
        params = [Param(k, v) for k, v in sorted((record.get("params") or {}).items())]
        for start in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(run_id, params=params[start:start + MAX_PARAMS])
        if record.get("text") is not None:
            self.client.log_text(run_id, record["text"], record["artifact"])

    def _run_of(self, record: dict) -> str:
        key = J.PARENT if record["trial"] is None else record["trial"]
        run_id = self.journal.run_ids.get(key)
        if run_id is None and key != J.PARENT and self.parent_run_id:
            # a run recorded before this journal existed (a search resumed from an older version)
            run_id = self._find({T.TAG_TRIAL_ID: key, T.TAG_PARENT: self.parent_run_id})
            if run_id is not None:
                self.journal.remember_run(key, run_id)
        if run_id is None:
            raise RuntimeError(f"no MLflow run for trial {key!r} (journal record {record['seq']})")
        return run_id

    def _log_batch(self, group: list[dict]) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._run_of(group[0])
        points = [tuple(m) for record in group for m in record.get("metrics") or []]
        trial = str(group[0]["trial"])
        if points and trial not in self._verified:
            points = self._not_logged(run_id, points)
        tags: dict[str, str] = {}
        for record in group:
            tags.update(record.get("tags") or {})
        if points or tags:
            metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points]
            self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        for record in group:  # an artifact (the skipped-files list): an overwrite, safe to replay
            if record.get("text") is not None:
                self.client.log_text(run_id, record["text"], record["artifact"])
        self._verified.add(trial)

    def _summary(self, record: dict) -> None:
        """The end-of-search summary on the parent run; replaying it (after a lost answer) adds nothing."""
        from mlflow.entities import Metric, RunTag

        run_id = self._run_of(record)
        if record.get("text") is not None:
            self.client.log_text(run_id, record["text"], record["artifact"])
        points = self._not_logged(run_id, [tuple(m) for m in record.get("metrics") or []])
        tags = record.get("tags") or {}
        if points or tags:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points],
                                  tags=[RunTag(k, str(v)) for k, v in tags.items()])
        experiment_tags = dict(record.get("experiment_tags") or {})  # e.g. the search's saved UI view
        if record.get("note"):
            experiment_tags[EXPERIMENT_NOTE_TAG] = record["note"]
        if experiment_tags:
            experiment_id = self.client.get_run(run_id).info.experiment_id
            for key, value in experiment_tags.items():
                self.client.set_experiment_tag(experiment_id, key.replace(J.PARENT_RUN_PLACEHOLDER, run_id),
                                               value.replace(J.PARENT_RUN_PLACEHOLDER, run_id))

    def _not_logged(self, run_id: str, points: list[tuple]) -> list[tuple]:
        """Drop the points MLflow already has (same key, step and timestamp)."""
        have = set()
        for key in {p[0] for p in points}:
            have |= {(key, int(m.step), int(m.timestamp)) for m in self.client.get_metric_history(run_id, key)}
        return [p for p in points if (p[0], int(p[3]), int(p[2])) not in have]

    # ------------------------------------------------------------ background
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lic-search-mlflow-sender", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        delay = self._backoff[0]
        while True:
            if not self.journal.wait_for_records(0.5):
                if self._stop.is_set():
                    return
                continue
            try:
                self.ship_pending()
            except Exception as error:  # noqa: BLE001 - the server is down or failing: retry later
                self.last_error = error
                if self.down_since is None:
                    self.down_since = time.time()
                    self._notify(f"lic-search: MLflow tracking server {self.tracking_uri} is unreachable "
                                 f"({_short(error)}); training goes on, {self.journal.pending} tracking records "
                                 f"pending in {self.journal.location}, shipped when it is back")
                if self._stop.is_set() and self._stop_deadline is not None and time.time() >= self._stop_deadline:
                    return
                self._sleep(min(delay, 2.0) if self._stop.is_set() else delay)  # flushing: retry often
                self._wake.clear()
                delay = min(delay * 2, self._backoff[1])
                continue
            delay = self._backoff[0]
            if self.down_since is not None and self.journal.pending == 0:
                self._notify(f"lic-search: MLflow tracking server {self.tracking_uri} is back after "
                             f"{time.time() - self.down_since:.0f} s; tracking caught up")
                self.down_since = None

    _stop_deadline: Optional[float] = None

    def close(self, timeout: float) -> int:
        """Flush for at most ``timeout`` seconds, then stop. Returns the records still pending."""
        self._stop_deadline = time.time() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            while self._thread.is_alive() and time.time() < self._stop_deadline:
                if self.journal.pending == 0 and self.down_since is None:
                    break
                self._thread.join(0.2)
        return self.journal.pending


def _short(error: BaseException) -> str:
    text = f"{error.__class__.__name__}: {error}"
    return text if len(text) < 200 else text[:200] + "..."
