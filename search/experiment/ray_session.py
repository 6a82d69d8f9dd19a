"""The local Ray instance a ``run``/``resume`` starts: recorded, shut down on every exit, and its
leftovers ended by a later command when its driver died (``kill -9``, a crashed machine session).

When the driver starts a local instance it writes ``ray_session.json`` in the experiment folder:
host, driver pid and start time, Ray's session folder, GCS address and the head processes (pid
and start time). A process belongs to that instance when it is one of those processes (same
pid *and* start time), descends from one, or holds a file open in the session folder (every Ray
process of an instance keeps its logs there). Processes are never picked by name. The head processes are
the driver's children that work in the session folder ``ray.init()`` returned (public Ray API only).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from search.experiment.drivers import running_process
from search.experiment.store import ExperimentStore, is_uri

SESSION_FILE = "ray_session.json"


@dataclass
class RaySession:
    host: str
    driver_pid: int
    driver_started: float
    session_dir: str
    gcs_address: str
    processes: list[list] = field(default_factory=list)  # [pid, create_time] of the head processes

    def driver_alive(self) -> bool:
        return running_process(self.driver_pid, self.driver_started) is not None


def current_local_session(address_info: dict) -> Optional[RaySession]:
    """The instance this process started with ``ray.init(address="local")``, from what that call returned
    (``ray.init().address_info``: its session folder and GCS address): its head processes are this process's
    children that work in that session folder."""
    import psutil

    session_dir = address_info.get("session_dir")
    if not session_dir:
        return None
    me = psutil.Process()
    processes = []
    for child in me.children():
        if _in_session(child, session_dir):
            try:
                processes.append([child.pid, child.create_time()])
            except psutil.Error:
                pass
    return RaySession(socket.gethostname(), me.pid, me.create_time(), session_dir,
                      str(address_info.get("gcs_address") or ""), processes)


def _in_session(process, session_dir: str) -> bool:
    """Whether ``process`` works in the Ray session folder: names it on its command line (Ray's daemons get their
    log and session folders as arguments) or holds a file open in it."""
    import psutil

    prefix = session_dir.rstrip("/") + "/"
    try:
        return any(prefix in part or part.endswith(session_dir) for part in process.cmdline()) or _holds_file_in(
            process, prefix)
    except psutil.Error:
        return False


def _holds_file_in(process, prefix: str) -> bool:
    """Whether ``process`` has a file open under ``prefix`` (raises psutil's errors)."""
    return any(f.path.startswith(prefix) for f in process.open_files())


def record(store: ExperimentStore, session: RaySession) -> None:
    store.write_text(SESSION_FILE, json.dumps(asdict(session), indent=1))


def load(store: ExperimentStore) -> Optional[RaySession]:
    try:
        if not store.exists(SESSION_FILE):
            return None
        return RaySession(**json.loads(store.read_text(SESSION_FILE)))
    except Exception:  # noqa: BLE001 - a damaged record names no process: nothing to end
        return None


def forget(store: ExperimentStore) -> None:
    try:
        store.fs.delete_file(f"{store.path}/{SESSION_FILE}")
    except (FileNotFoundError, OSError):
        pass


def members(session: RaySession) -> list:
    """The live processes of the recorded instance (see the module docstring)."""
    import psutil

    found = {}
    for pid, started in session.processes:
        process = running_process(pid, started)
        if process is not None:
            found[process.pid] = process
            for child in process.children(recursive=True):
                found[child.pid] = child
    prefix = session.session_dir.rstrip("/") + "/"
    for process in psutil.process_iter():
        if process.pid in found or process.pid == os.getpid():
            continue
        try:
            if _holds_file_in(process, prefix):
                found[process.pid] = process
        except psutil.Error:
            continue
    return list(found.values())


def _end(processes: list, grace: float = 5.0) -> int:
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(processes)


def end_leftovers(store: ExperimentStore, notify: Callable[[str], None] = print) -> int:
    """End what is left of an instance recorded in ``store`` whose driver is gone. Returns how many."""
    session = load(store)
    if session is None or session.host != socket.gethostname():
        return 0
    if session.driver_alive():
        return 0  # its driver still runs: that search is not ours to end
    leftovers = members(session)
    forget(store)
    if not leftovers:
        return 0
    _end(leftovers)
    notify(f"lic-search: ended {len(leftovers)} leftover processes of the local Ray instance "
           f"{session.session_dir} (recorded in {store}/{SESSION_FILE}; its driver, pid {session.driver_pid}, "
           f"is gone)")
    return len(leftovers)


def end_leftovers_near(store: ExperimentStore, notify: Callable[[str], None] = print) -> int:
    """:func:`end_leftovers` for ``store`` and, on a local disk, every experiment folder beside it."""
    ended = end_leftovers(store, notify)
    if is_uri(store.location):
        return ended
    for record_file in sorted(Path(store.parent).glob(f"*/{SESSION_FILE}")):
        if record_file.parent != Path(store.location):
            ended += end_leftovers(ExperimentStore(record_file.parent), notify)
    return ended


def shutdown(store: Optional[ExperimentStore], session: Optional[RaySession]) -> None:
    """``ray.shutdown()``, then end any process of the instance that outlived it, and drop the record."""
    import ray

    ray.shutdown()
    if session is not None:
        deadline = time.time() + 10
        survivors = members(session)
        while survivors and time.time() < deadline:
            time.sleep(0.5)
            survivors = members(session)
        if survivors:
            _end(survivors)
    if store is not None:
        forget(store)
