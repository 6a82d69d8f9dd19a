"""Stopping a search: Ctrl-C once stops after every running trial's next checkpoint, twice stops now;
a job's end (SIGTERM, SIGUSR1, SIGUSR2: what Slurm's ``--signal`` and ``scancel`` send) stops within seconds.

Ray Tune's own SIGINT handler stops at once. Here SIGINT is ours (``TUNE_DISABLE_SIGINT_HANDLER``):
the first one only marks the search as stopping; :class:`GracefulStop`, a Tune callback, waits
until each running trial has reported again (every result of ``train_lic`` carries a checkpoint)
and then raises Tune's stop signal (SIGUSR1, which Tune always handles: it saves the experiment
state and returns from ``fit``). A second Ctrl-C raises it at once. Trials are left unfinished,
so ``lic-search resume`` continues them from those checkpoints.

A job's end cannot wait for the next evaluation: the driver passes SIGTERM on to every running
trial's process (each trial registers it at setup: ``trainables/training/trial_processes.py``; signalled on
its own node), whose SIGTERM protocol
(``trainables/training/preemption.py``) checkpoints at the next iteration and ends the attempt;
once every trial has, Tune stops as above. Tune takes SIGUSR1 for itself inside ``fit``: the
callback takes it back at Tune's first step and calls Tune's handler itself to stop. If a trial
has not checkpointed within :data:`JOB_END_DEADLINE_S`, or a second signal comes, it stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

from ray import tune

from trainables import metrics as M
from trainables.training import trial_processes


#: The signals a batch system sends before the end of a job (Slurm: ``--signal``, ``scancel``, the time limit).
JOB_END_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")
#: After a job-end signal, the longest wait for the running trials' checkpoints before stopping anyway
#: (Slurm's default warning before the kill is 120 s; a trial checkpoints at its next iteration).
JOB_END_DEADLINE_S = 60.0


class JobEnded(BaseException):
    """A job-end signal outside the Tuner's loop (starting Ray, recording the search, the summary): nothing is
    training, so nothing to checkpoint; ``lic-search`` exits 75. A BaseException like KeyboardInterrupt, so no
    ``except Exception`` swallows it on the way out."""


_catching = {"on": False}


def _job_ended(signum, frame) -> None:
    raise JobEnded(signal.Signals(signum).name)


def catch_job_end() -> None:
    """Make the job-end signals raise :class:`JobEnded` (main thread only); :class:`GracefulStop` takes them over
    inside the Tuner's loop and gives them back. Called again after ``ray.init``, whose failure-signal handler
    (C++) would otherwise turn SIGTERM into an abort of the driver."""
    if threading.current_thread() is not threading.main_thread():
        return
    _catching["on"] = True
    for name in JOB_END_SIGNALS:
        signal.signal(getattr(signal, name), _job_ended)


def catch_job_end_again() -> None:
    """:func:`catch_job_end` again, if a command asked for it (after ``ray.init`` replaced the handlers)."""
    if _catching["on"]:
        catch_job_end()


class GracefulStop(tune.Callback):
    def __init__(self, notify: Callable[[str], None] = print):
        self.requested = False  # Ctrl-C once, or a job-end signal
        self.stopped_now = False  # Ctrl-C twice, a second job-end signal, or the deadline passed
        self.stopped_by: Optional[str] = None  # "Ctrl-C" or the job-end signal's name
        self._notify = notify
        self._waiting: Optional[set[str]] = None  # trials whose next checkpoint the stop waits for
        self._signalled = False
        self._previous: dict[int, object] = {}
        self._reported: set[str] = set()
        # trials sent SIGTERM: only their preemption checkpoint counts (an evaluation's report in flight at the
        # signal does not; stopping on it would lose the preempted result and the iterations since)
        self._awaiting_notice: set[str] = set()
        self._deadline: Optional[float] = None  # a job-end signal: stop at once after this (time.monotonic)
        self._preempt_pending = False  # a job-end signal: running trials get SIGTERM at Tune's next step
        self._tune_handler = None  # Tune's own SIGUSR1 handler (its stop), taken over inside fit
        self._registry = None  # where the trials register their processes (started at Tune's setup)

    def __getstate__(self) -> dict:  # Tune pickles callbacks with its state: nothing of this run belongs there
        return {"requested": False, "stopped_now": False, "stopped_by": None,
                "_notify": print, "_waiting": None,
                "_signalled": False, "_previous": {}, "_reported": set(), "_awaiting_notice": set(), "_deadline": None,
                "_preempt_pending": False, "_tune_handler": None, "_registry": None}

    # --------------------------------------------------------------- signals
    def install(self) -> bool:
        """Take over SIGINT and the job-end signals (main thread only). False where signals cannot be handled."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
            return False
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        for name in JOB_END_SIGNALS:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._on_job_end)
        return True

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _on_sigint(self, signum, frame) -> None:
        if not self.requested:
            self.requested, self.stopped_by = True, "Ctrl-C"
            self._notify("\nlic-search: Ctrl-C: stopping after each running trial's next checkpoint "
                         "(Ctrl-C again to stop now).")
            return
        self.stopped_now = True
        self._notify("\nlic-search: Ctrl-C again: stopping now.")
        self._stop_tune()

    def _on_job_end(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and self.stopped_by != "Ctrl-C":  # a second job-end signal: the kill is near
            self.stopped_now = True
            self._notify(f"\nlic-search: {name} again: stopping now.")
            self._stop_tune()
            return
        self.requested, self.stopped_by = True, name
        self._deadline = time.monotonic() + JOB_END_DEADLINE_S
        self._preempt_pending = True
        self._notify(f"\nlic-search: got {name}: every running trial checkpoints at its next iteration, then the "
                     f"search stops (at most {JOB_END_DEADLINE_S:.0f} s) to be continued by the next job.")

    def _take_sigusr1(self) -> None:
        """Inside ``fit`` (Tune's main-thread loop): SIGUSR1 is a job-end signal; Tune's handler is our stop."""
        if self._previous and signal.getsignal(signal.SIGUSR1) != self._on_job_end:  # (bound methods: equal, not same)
            self._tune_handler = signal.signal(signal.SIGUSR1, self._on_job_end)

    def _stop_tune(self) -> None:
        if not self._signalled:
            self._signalled = True
            if callable(self._tune_handler):
                self._tune_handler(signal.SIGUSR1, None)
            else:
                os.kill(os.getpid(), signal.SIGUSR1)

    # ------------------------------------------------------------ callback
    def setup(self, **info):
        self._registry = trial_processes.start_registry()  # before any trial starts: each registers at its setup

    def on_step_begin(self, iteration, trials, **info):
        self._take_sigusr1()
        if self._preempt_pending:
            self._preempt_pending = False
            self._awaiting_notice = preempt_running_trials(trials, self._registry, self._notify)
        if self._deadline is not None and time.monotonic() > self._deadline and not self._signalled:
            self.stopped_now = True
            self._notify("lic-search: trials still without a checkpoint at the deadline: stopping now.")
            self._stop_tune()
        if self.requested and self._waiting is None:
            self._waiting = {t.trial_id for t in trials if t.status == "RUNNING"}
        if self._waiting:
            # a trial that reported and whose checkpoint Tune has registered (no save in flight)
            saved = {t.trial_id for t in trials if t.trial_id in self._reported and not t.is_saving}
            self._waiting -= saved
        self._check()

    def _check(self) -> None:
        if self.requested and self._waiting is not None and not self._waiting:
            self._stop_tune()

    def _done_with(self, trial) -> None:
        if trial.trial_id in self._awaiting_notice:  # a save of an evaluation, not yet the preemption checkpoint
            return
        if self._waiting is not None:
            self._waiting.discard(trial.trial_id)
        self._check()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(M.NOTICE) == M.NOTICE_PREEMPTED:
            self._awaiting_notice.discard(trial.trial_id)
        if self.requested and trial.trial_id not in self._awaiting_notice:
            self._reported.add(trial.trial_id)

    def on_trial_save(self, iteration, trials, trial, **info):
        self._done_with(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):  # a preempted attempt ended (after its checkpoint)
        self._ended(trial)

    def _ended(self, trial) -> None:
        self._awaiting_notice.discard(trial.trial_id)
        self._done_with(trial)


def preempt_running_trials(trials, registry, notify: Callable[[str], None] = print) -> set[str]:
    """SIGTERM to every running trial's process, on its node: each checkpoints at its next iteration (the
    trials' preemption protocol) and ends its attempt. Returns the ids of the trials signalled (a trial still
    starting, not yet registered, is not: Tune's stop ends it before it has trained anything to lose)."""
    import ray

    running = [trial.trial_id for trial in trials if trial.status == "RUNNING"]
    try:
        processes = trial_processes.lookup(registry, running) if registry is not None and running else {}
    except Exception as error:  # noqa: BLE001 - said; Tune's stop at the deadline still ends the search
        notify(f"lic-search: could not find the running trials' processes ({type(error).__name__}: {error})")
        processes = {}
    trial_of = {(process.node_id, process.pid): trial_id for trial_id, process in processes.items()}
    by_node: dict[str, list[trial_processes.TrialProcess]] = {}
    for process in processes.values():
        by_node.setdefault(process.node_id, []).append(process)
    here = ray.get_runtime_context().get_node_id()
    sent: dict[str, list[int]] = {}
    pending = {}
    for node, on_node in by_node.items():
        if node == here:
            sent[node] = trial_processes.terminate(on_node)
        else:
            pending[node] = trial_processes.terminate_on_node(node, on_node)
    if pending:
        ray.wait(list(pending.values()), num_returns=len(pending), timeout=30)  # all nodes at once, 30 s at most
    for node, task in pending.items():
        try:
            sent[node] = ray.get(task, timeout=0)
        except Exception as error:  # noqa: BLE001 - a node gone: its trials restart from their last checkpoints
            notify(f"lic-search: could not signal the trials on node {node[:8]} ({type(error).__name__})")
    return {trial_of[(node, pid)] for node, pids in sent.items() for pid in pids}
