"""Which process runs each trial, and on which node: what the driver's job-end stop signals.

At a job's end (Slurm's ``--signal``, ``scancel``, a lease running out) the driver SIGTERMs every running
trial's process on its own node (``search/tuning/interrupt.py``), so each checkpoints at its next iteration.
Ray's public API does not say which process runs a Tune trial (``ray.util.state`` needs the dashboard's API
server, which searches start without), so each trial says so itself: its setup
(:class:`trainables.training.preemption.PreemptibleTrainable`) registers its node, pid and the process's start
time in a registry actor that the driver starts in its own job. The start time lets the signal skip a pid
that the operating system has given to another process since.

A trial run outside a lic-search driver (no registry in its job) registers nothing.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Iterable

#: The registry's actor name, in the driver's job namespace (each search, and each resume, has its own).
REGISTRY_NAME = "lic_search_trial_processes"


@dataclass(frozen=True)
class TrialProcess:
    """A trial's process: its node (Ray node id), pid and start time (seconds since the epoch, psutil's)."""

    node_id: str
    pid: int
    started: float


class TrialProcessRegistry:
    """``{trial id: TrialProcess}`` of the trials' latest attempts (a Ray actor, started by the driver)."""

    def __init__(self) -> None:
        self._processes: dict[str, TrialProcess] = {}

    def register(self, trial_id: str, process: TrialProcess) -> None:
        self._processes[trial_id] = process

    def lookup(self, trial_ids: list[str]) -> dict[str, TrialProcess]:
        return {trial_id: self._processes[trial_id] for trial_id in trial_ids if trial_id in self._processes}


def start_registry() -> Any:
    """The driver's registry actor (started once per driver; a second call returns the same one)."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=4)(TrialProcessRegistry)
    return actor.options(name=REGISTRY_NAME, get_if_exists=True).remote()


def this_process() -> TrialProcess:
    import psutil
    import ray

    return TrialProcess(ray.get_runtime_context().get_node_id(), os.getpid(), psutil.Process().create_time())


def register(trial_id: str) -> bool:
    """Register this process as ``trial_id``'s in the driver's registry. False when there is none."""
    import ray

    try:
        registry = ray.get_actor(REGISTRY_NAME)
    except ValueError:  # not started by a lic-search driver
        return False
    registry.register.remote(trial_id, this_process())
    return True


def lookup(registry: Any, trial_ids: Iterable[str], timeout: float = 10.0) -> dict[str, TrialProcess]:
    """The registered processes of ``trial_ids`` (a trial that has not registered yet is left out)."""
    import ray

    return ray.get(registry.lookup.remote(list(trial_ids)), timeout=timeout)


def terminate(processes: list[TrialProcess], signum: int = signal.SIGTERM) -> list[int]:
    """Send ``signum`` to each process that is still the one registered (same pid and start time); the pids sent."""
    import psutil

    sent = []
    for process in processes:
        try:
            if abs(psutil.Process(process.pid).create_time() - process.started) > 0.01:
                continue  # the attempt ended and its pid now belongs to another process
            os.kill(process.pid, signum)
            sent.append(process.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):  # the attempt just ended
            pass
    return sent


def terminate_on_node(node_id: str, processes: list[TrialProcess]) -> Any:
    """A task on ``node_id`` that sends SIGTERM to ``processes`` there (its ObjectRef)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(terminate).options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id,
                                                                                                       soft=False))
    return task.remote(processes)


__all__ = ["REGISTRY_NAME", "TrialProcess", "TrialProcessRegistry", "start_registry", "this_process", "register",
           "lookup", "terminate", "terminate_on_node"]
