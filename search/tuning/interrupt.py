"""Ctrl-C during a search: once stops after every running trial's next checkpoint, twice stops now.

Ray Tune's own SIGINT handler stops at once. Here SIGINT is ours (``TUNE_DISABLE_SIGINT_HANDLER``):
the first one only marks the search as stopping; :class:`GracefulStop`, a Tune callback, waits
until each running trial has reported again (every result of ``train_lic`` carries a checkpoint)
and then raises Tune's stop signal (SIGUSR1, which Tune always handles: it saves the experiment
state and returns from ``fit``). A second Ctrl-C raises it at once. Trials are left unfinished,
so ``lic-search resume`` continues them from those checkpoints.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

from ray import tune


class GracefulStop(tune.Callback):
    def __init__(self, notify: Callable[[str], None] = print):
        self.requested = False  # Ctrl-C once
        self.stopped_now = False  # Ctrl-C twice
        self._notify = notify
        self._waiting: Optional[set[str]] = None  # trials whose next checkpoint the stop waits for
        self._signalled = False
        self._previous = None
        self._reported: set[str] = set()

    def __getstate__(self) -> dict:  # Tune pickles callbacks with its state: nothing of this run belongs there
        return {"requested": False, "stopped_now": False, "_notify": print, "_waiting": None,
                "_signalled": False, "_previous": None, "_reported": set()}

    # --------------------------------------------------------------- signals
    def install(self) -> bool:
        """Take over SIGINT (main thread only). Returns False where signals cannot be handled."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
            return False
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        if not self.requested:
            self.requested = True
            self._notify("\nlic-search: Ctrl-C: stopping after each running trial's next checkpoint "
                         "(Ctrl-C again to stop now).")
            return
        self.stopped_now = True
        self._notify("\nlic-search: Ctrl-C again: stopping now.")
        self._stop_tune()

    def _stop_tune(self) -> None:
        if not self._signalled:
            self._signalled = True
            os.kill(os.getpid(), signal.SIGUSR1)

    # ------------------------------------------------------------ callback
    def on_step_begin(self, iteration, trials, **info):
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
        if self._waiting is not None:
            self._waiting.discard(trial.trial_id)
        self._check()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.requested:
            self._reported.add(trial.trial_id)

    def on_trial_save(self, iteration, trials, trial, **info):
        self._done_with(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done_with(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done_with(trial)
