"""Ending a trial's attempt early without losing its work: SIGTERM and the checkpoint clock.

A preemption notice (a spot instance reclaimed, a node drained, ``ray stop``, Slurm's KillWait)
reaches the trial process as SIGTERM. Ray's worker turns it into ``SystemExit`` at once: the work
since the last checkpoint is lost and the attempt counts against ``max_failures``. Instead,
:class:`PreemptibleTrainable` (a mixin of the function trainable, so its ``setup`` runs in the
actor's main thread, where Python runs signal handlers) only records the request; the training
loop checkpoints at the next iteration, reports that checkpoint and raises :class:`TrialPreempted`,
which Ray treats like its own preempted actors: the trial restarts from that checkpoint in a new
process, on any node, without using up ``max_failures``. A second SIGTERM exits at once.

Between evaluations, :class:`CheckpointClock` asks for a checkpoint every
``schedule.checkpoint_minutes``, so a SIGKILL or a lost node costs at most that much work.

A data-parallel trial (:mod:`trainables.training.data_parallel_trainable`) does the same on every
rank: each worker process handles SIGTERM so, the coordinator passes its own SIGTERM on to rank 0,
and the ranks agree on the reason each iteration (:func:`trainables.training.data_parallel.agreed`),
so all of them checkpoint and stop at the same one.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable, Optional

from ray.exceptions import RayActorError

from trainables import metrics as M
from trainables.training import trial_processes

CLOCK = M.NOTICE_CHECKPOINT  # notice of a checkpoint taken on the clock, between evaluations
PREEMPTED = M.NOTICE_PREEMPTED  # notice of the checkpoint taken after SIGTERM: the attempt ends after it

_requested = threading.Event()
_previous: Any = None


class TrialPreempted(RayActorError):
    """The attempt ended on SIGTERM after checkpointing. ``preempted=True``: Ray's Trial.handle_error
    does not count it as a failure and restores the trial from its latest checkpoint."""

    def __init__(self, message: str):
        super().__init__(error_msg=message, preempted=True)

    def __reduce__(self):
        return TrialPreempted, (self.error_msg,)


def stop_requested() -> bool:
    return _requested.is_set()


def request_stop() -> None:
    """As SIGTERM does: checkpoint at the next iteration and end the attempt (a data-parallel trial's rank 0
    when its coordinator got the SIGTERM)."""
    _requested.set()


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _requested.is_set():
        _requested.set()  # the training loop checkpoints at its next iteration and ends the attempt
        return
    if callable(_previous):  # a second SIGTERM: whoever sent it means now (Ray's handler exits)
        _previous(signum, frame)
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> bool:
    """Make SIGTERM a stop request (main thread only: Python runs handlers there). Returns whether installed."""
    global _previous
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        _previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)
    _requested.clear()
    return True


class PreemptibleTrainable:
    """Mixin for Ray Tune's function trainable (``train_func.__mixins__``, kept by ``tune.with_parameters``).
    Its setup also registers this process as the trial's with the driver, which signals it at a job's end
    (:mod:`trainables.training.trial_processes`)."""

    def setup(self, config: dict) -> None:
        install_sigterm_handler()
        super().setup(config)  # type: ignore[misc]
        trial_processes.register(self.trial_id)  # type: ignore[attr-defined]


class CheckpointClock:
    """Whether a checkpoint between evaluations is due, and why: after SIGTERM, or every ``minutes`` (0: never)."""

    def __init__(self, minutes: float, now: Callable[[], float] = time.monotonic):
        self.seconds = float(minutes) * 60.0
        self._now = now
        self._last = now()

    def restart(self) -> None:
        """A checkpoint was just written (at an evaluation or on the clock)."""
        self._last = self._now()

    def due(self) -> Optional[str]:
        if _requested.is_set():
            return PREEMPTED
        if self.seconds > 0 and self._now() - self._last >= self.seconds:
            return CLOCK
        return None
