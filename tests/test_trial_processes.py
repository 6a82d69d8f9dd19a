"""The job-end stop signals each trial's registered process, and never a process that has since taken its pid."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil

from trainables.training import trial_processes
from trainables.training.trial_processes import TrialProcess, TrialProcessRegistry


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_terminate_signals_the_registered_process_and_skips_a_reused_pid():
    registered, other = _sleeper(), _sleeper()
    try:
        started = psutil.Process(registered.pid).create_time()
        # the same pid with another start time: the pid was given to another process after the trial's ended
        reused = TrialProcess("node", other.pid, psutil.Process(other.pid).create_time() - 5.0)
        gone = TrialProcess("node", registered.pid + 10_000_000, started)  # no such process (the attempt ended)
        sent = trial_processes.terminate([TrialProcess("node", registered.pid, started), reused, gone])
        assert sent == [registered.pid]
        assert registered.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None, "a process that only shares the pid was signalled"
    finally:
        for process in (registered, other):
            process.kill()
            process.wait()


def test_the_registry_keeps_each_trials_latest_attempt():
    registry = TrialProcessRegistry()
    registry.register("t1", TrialProcess("a", 1, 1.0))
    registry.register("t2", TrialProcess("b", 2, 2.0))
    registry.register("t1", TrialProcess("c", 3, 3.0))  # a restarted attempt, maybe on another node
    assert registry.lookup(["t1", "t3"]) == {"t1": TrialProcess("c", 3, 3.0)}
