"""One ``run``/``resume``'s tracking: the experiment's journal, its sender thread and the Tune callback.

The search never waits for MLflow: trial records go to the journal, the sender ships them, and at
the end it flushes for a bounded time (``--tracking-flush-seconds``); what is still pending stays
in the journal for ``lic-search sync`` (which resume runs first).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from search.errors import TrackingError
from search.experiment.store import ExperimentStore
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking.client import check_reachable
from search.tracking.sender import Sender
from search.tracking.trial_logger import MlflowTrialLogger

DEFAULT_FLUSH_SECONDS = 30.0
QUICK_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def reachable(tracking_uri: str, offline: bool, notify: Callable[[str], None] = print) -> bool:
    """Whether the server answers. Unreachable is an error (before Ray starts) unless ``offline``."""

    try:
        check_reachable(tracking_uri)
        return True
    except TrackingError as error:
        if not offline:
            raise
        notify(f"lic-search: {error}\nlic-search: --tracking-offline: recording to the experiment's tracking "
               "journal; it is shipped when the server answers (or later with `lic-search sync`).")
        return False


def search_tags(experiment_dir: str, stratify_by: list[str], baseline: Optional[str] = None,
                variants: Sequence[str] = (), objectives: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The parent run's tags: role, experiment folder, rate-point keys, the variant labels (file order:
    the report's table order), the baseline variant's label and a multi-objective search's (metric, mode)s."""
    import json

    tags = {T.TAG_ROLE: T.ROLE_SEARCH, T.TAG_SEARCH_DIR: str(experiment_dir),
            T.TAG_STRATIFY_BY: json.dumps(list(stratify_by))}
    if variants:
        tags[T.TAG_VARIANTS] = json.dumps(list(variants))
    if objectives:
        tags[T.TAG_OBJECTIVES] = json.dumps([list(pair) for pair in objectives])
    return {**tags, T.TAG_BASELINE: baseline} if baseline else tags


def journal_search_run(store: ExperimentStore, name: str, space_text: str, stratify_by: list[str],
                       baseline: Optional[str] = None, variants: Sequence[str] = (),
                       objectives: Sequence[tuple[str, str]] = ()) -> None:
    """The parent run of a search, created by the sender (now when online, else when the server answers);
    ``baseline``, ``variants`` and ``objectives``: see :func:`search_tags`."""
    journal = J.Journal(store)
    journal.create()
    journal.append(J.CREATE_SEARCH, None, run_name=name,
                   tags=search_tags(store.location, stratify_by, baseline, variants, objectives),
                   text=space_text, artifact=T.ARTIFACT_SPACE)


def record_summary(store: ExperimentStore, state, fields: dict, seconds: float = DEFAULT_FLUSH_SECONDS) -> int:
    """Journal the end-of-search summary for the parent run (:func:`search.monitor.summary.parent_summary`, its
    note naming :data:`search.tracking.journal.PARENT_RUN_PLACEHOLDER`) and ship it (see :func:`record`)."""
    return record(store, state, J.SUMMARY, None, seconds, **fields)


def record(store: ExperimentStore, state, op: str, trial: Optional[str], seconds: float = DEFAULT_FLUSH_SECONDS,
           **fields) -> int:
    """Journal one record of a finished search (LOF metrics, a report, the summary) and ship it for at most
    ``seconds``: commands after the search write to MLflow the way the search does, so an outage delays the
    record instead of losing it or crashing the command.

    It ships only when nothing else is pending and the server answers: behind records the search could
    not ship (an outage) it waits for ``lic-search sync`` or resume, in order. Returns the records pending."""
    journal = J.Journal(store)
    waiting = journal.pending
    journal.append(op, trial, **fields)
    if waiting or not reachable(state.tracking_uri, offline=True, notify=lambda message: None):
        return journal.pending
    try:
        sync(store, state, time.time() + seconds, notify=lambda message: None)
    except Exception:  # noqa: BLE001 - MLflow's and the network's errors: the journal keeps the summary
        pass
    return J.Journal(store).pending


def sync(store: ExperimentStore, state, deadline: Optional[float] = None,
         notify: Callable[[str], None] = print, progress: Any = None) -> int:
    """Ship what the journal holds beyond its shipped offset; raises what MLflow raises. Returns how many.

    ``progress`` (a ``search.monitor.meter.Meter``) counts the records shipped of those pending."""
    journal = J.Journal(store)
    pending = journal.pending
    if pending == 0:
        return 0
    sender = Sender(journal, state.tracking_uri, state.name, state.parent_run_id or None, notify=notify)
    if progress is not None:
        progress.start(pending)
    shipped = sender.ship_pending(deadline, on_shipped=None if progress is None else progress.update)
    remember_parent(store, state, journal)
    notify(f"lic-search: shipped {shipped} tracking records from {journal.location} to {state.tracking_uri}"
           + (f"; {journal.pending} still pending" if journal.pending else ""))
    return shipped


def remember_parent(store: ExperimentStore, state, journal: J.Journal) -> None:
    """A parent run created by the sender (offline start): write its id into the search's state file."""
    parent = journal.run_ids.get(J.PARENT)
    if parent and state.parent_run_id != parent:
        state.parent_run_id = parent
        state.save(store)


class TrackingSession:
    """Journal + background sender + :class:`search.tracking.client.MlflowTrialLogger` for one driver."""

    def __init__(self, store: ExperimentStore, state, name_keys: Optional[list[str]] = None, variants=None,
                 stratify_by: Optional[list[str]] = None, flush_seconds: float = DEFAULT_FLUSH_SECONDS,
                 notify: Callable[[str], None] = print, run_params: Optional[dict[str, str]] = None):
        import os


        # The sender retries with its own backoff: MLflow's client need not spend minutes on one request
        # (its default: 7 retries) before the console can say the server is down. The user's values win.
        for variable, value in QUICK_CLIENT.items():
            os.environ.setdefault(variable, value)

        self.store, self.state, self.flush_seconds, self._notify = store, state, flush_seconds, notify
        self.journal = J.Journal(store)
        recorded_before = self.journal.exists()  # else: a search recorded before the journal existed
        self.journal.create()
        self.sender = Sender(self.journal, state.tracking_uri, state.name, state.parent_run_id or None, notify=notify)
        self.logger = MlflowTrialLogger(state.tracking_uri, state.name, state.parent_run_id or None,
                                        journal=self.journal, sender=self.sender,
                                        recover_from_mlflow=not recorded_before, name_keys=name_keys,
                                        variants=variants, stratify_by=stratify_by, run_params=run_params)

    def start(self) -> None:
        self.journal.append(J.STATUS, None, status="RUNNING", time=int(time.time() * 1000))
        self.sender.start()

    def close(self, status: str) -> int:
        """Record the search's end, flush for a bounded time; returns the records left pending."""
        self.journal.append(J.STATUS, None, status=status, time=int(time.time() * 1000))
        pending = self.sender.close(self.flush_seconds)
        remember_parent(self.store, self.state, self.journal)
        if pending:
            self._notify(f"lic-search: {pending} tracking records not in MLflow yet ({self.state.tracking_uri} "
                         f"did not take them within {self.flush_seconds:.0f} s); they are kept in "
                         f"{self.journal.location}. Ship them with: lic-search sync {self.store}")
        return pending
