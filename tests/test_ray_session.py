"""Leftovers of a local Ray instance whose driver died: found by the session it recorded (its processes
by pid and start time, their descendants, holders of files in its session folder), never by name."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from search.experiment import ray_session
from search.experiment.store import ExperimentStore

HOLD = "import sys, time; f = open(sys.argv[1], 'a'); time.sleep(120)"


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", *args])


def _dead_driver() -> tuple[int, float]:
    process = _spawn("pass")
    started = psutil.Process(process.pid).create_time()
    process.wait()
    return process.pid, started


def _session(tmp_path: Path, driver: tuple[int, float], head: subprocess.Popen) -> ray_session.RaySession:
    import socket

    return ray_session.RaySession(socket.gethostname(), driver[0], driver[1], str(tmp_path / "session_x"), "",
                                  [[head.pid, psutil.Process(head.pid).create_time()]])


def test_leftovers_of_a_dead_driver_are_ended_and_nothing_else(tmp_path: Path, capsys):
    (tmp_path / "session_x" / "logs").mkdir(parents=True)
    store = ExperimentStore(tmp_path / "experiment")
    store.create()
    head = _spawn("import time; time.sleep(120)")  # a recorded head process (think raylet)
    agent = _spawn(HOLD, str(tmp_path / "session_x" / "logs" / "agent.out"))  # reparented, keeps its log open
    bystander = _spawn(HOLD, str(tmp_path / "elsewhere.log"))  # same name and interpreter, another instance
    try:
        time.sleep(1.0)  # let the agent open its log
        ray_session.record(store, _session(tmp_path, _dead_driver(), head))
        assert ray_session.end_leftovers(store) == 2
        assert head.wait(timeout=10) is not None and agent.wait(timeout=10) is not None
        assert bystander.poll() is None
        assert "ended 2 leftover processes" in capsys.readouterr().out
        assert not store.exists(ray_session.SESSION_FILE)
    finally:
        for process in (head, agent, bystander):
            process.kill()
            process.wait()


def test_an_instance_whose_driver_still_runs_is_left_alone(tmp_path: Path):
    (tmp_path / "session_x").mkdir()
    store = ExperimentStore(tmp_path / "experiment")
    store.create()
    head = _spawn("import time; time.sleep(120)")
    try:
        me = psutil.Process()
        ray_session.record(store, _session(tmp_path, (me.pid, me.create_time()), head))
        assert ray_session.end_leftovers(store) == 0
        assert head.poll() is None and store.exists(ray_session.SESSION_FILE)
    finally:
        head.kill()
        head.wait()


def test_a_reused_pid_is_not_the_recorded_process(tmp_path: Path):
    (tmp_path / "session_x").mkdir()
    store = ExperimentStore(tmp_path / "experiment")
    store.create()
    other = _spawn("import time; time.sleep(120)")
    try:
        session = _session(tmp_path, _dead_driver(), other)
        session.processes = [[other.pid, session.processes[0][1] - 3600]]  # same pid, started an hour earlier
        ray_session.record(store, session)
        assert ray_session.end_leftovers(store) == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
