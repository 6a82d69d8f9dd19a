"""Driver records: one file per process that ran the search's Tuner (``drivers/``), with a heartbeat and how it
ended, so ``status`` can tell a running search from a killed one from any terminal; and the one liveness check
of a recorded process (pid + creation time, zombies count as gone)."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import psutil

from search.experiment.store import ExperimentStore

DRIVERS_DIR = "drivers"  # one record per driver process that ran the search (run, then each resume)
_mine: dict[str, str] = {}  # experiment folder -> this process's driver record
HEARTBEAT_S = 30.0  # the console refreshes its driver record at least this often while the driver runs
STALE_AFTER_S = 4 * HEARTBEAT_S  # a driver on another host counts as gone after this long without a heartbeat


@dataclass
class Driver:
    """The process running (or that ran) the search's Tuner."""

    pid: int
    host: str
    started: float
    heartbeat: float
    ended: Optional[float] = None
    outcome: Optional[str] = None  # "FINISHED", or "STOPPED" when it ended with trials unfinished
    process_created: Optional[float] = None  # psutil's create_time of the pid: tells a reused pid apart

    def alive(self, now: Optional[float] = None) -> Optional[bool]:
        """True/False when known; None when it runs on another host and its heartbeat is recent."""
        if self.ended is not None:
            return False
        if self.host == socket.gethostname():
            return running_process(self.pid, self.process_created) is not None
        return None if (now or time.time()) - self.heartbeat < STALE_AFTER_S else False


def _create_time(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def running_process(pid: int, created: Optional[float]) -> Optional[psutil.Process]:
    """The process ``pid`` if it runs and is the one created at ``created`` (pids are reused; a zombie has ended).

    The one liveness check of a recorded process: driver records and Ray sessions both use it."""
    try:
        process = psutil.Process(pid)
        if (created is None or abs(process.create_time() - created) < 1.0) and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (psutil.Error, ValueError):
        pass
    return None


def record_driver(store: ExperimentStore) -> None:
    """Called by the driver as the search starts: who runs it (read by ``status``).

    One file per driver (``drivers/driver-<start ms>-<pid>.json``), never rewritten by another:
    Ray copies the experiment folder down on restore and uploads its copy back now and then,
    so a single shared file would be overwritten with the previous driver's record."""
    now = time.time()
    driver = Driver(os.getpid(), socket.gethostname(), now, now, process_created=_create_time(os.getpid()))
    name = f"{DRIVERS_DIR}/driver-{int(now * 1000)}-{driver.pid}.json"
    store.write_text(name, json.dumps(asdict(driver), indent=2))
    _mine[store.location] = name


def _update_driver(store: ExperimentStore, **changes: Any) -> None:
    name = _mine.get(store.location)
    if name is None:
        return
    try:
        driver = json.loads(store.read_text(name))
        store.write_text(name, json.dumps({**driver, **changes}, indent=2))
    except (OSError, ValueError):
        pass  # a missed heartbeat only makes status less sure, never the search fail


def heartbeat(store: ExperimentStore) -> None:
    _update_driver(store, heartbeat=time.time())


def record_end(store: ExperimentStore, outcome: str) -> None:
    """Called by the driver when the Tuner's loop ends (``outcome``: FINISHED, or STOPPED with trials left)."""
    _update_driver(store, ended=time.time(), heartbeat=time.time(), outcome=outcome)


def read_driver(store: ExperimentStore) -> Optional[Driver]:
    """The latest driver's record (None for a search started before drivers were recorded)."""
    records = []
    for name in store.list(DRIVERS_DIR, "driver-*.json"):
        try:
            records.append(Driver(**json.loads(store.read_text(f"{DRIVERS_DIR}/{name}"))))
        except (OSError, ValueError, TypeError):
            continue  # caught mid-write
    return max(records, key=lambda d: d.started, default=None)
