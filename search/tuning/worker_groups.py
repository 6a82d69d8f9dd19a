"""Data-parallel trials seen from the driver: their worker layout, and their placement groups.

A data-parallel trial's Train workers live in a placement group that the Train controller
creates and releases. When Tune stops (ASHA) or pauses (PBT) such a trial, or its coordinator
dies, the Train controller ends with the coordinator before it could release the group; Ray
keeps such a group for the job's lifetime, so its CPUs and GPUs would stay taken for the rest
of the search (Train's own cleaner needs Ray's dashboard, which lic-search does not start).
The workers record their group in a :class:`WorkerGroupRegistry` actor as they start, and
:class:`WorkerGroupReaper` removes every group of a trial that is not running, and the groups
of a trial's earlier attempts.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from ray import tune

from trainables.training.data_parallel_trainable import WorkerGroup, WorkerGroupRegistry

_LOOK_EVERY_SECONDS = 1.0

logger = logging.getLogger(__name__)


def worker_group(resources: Any) -> WorkerGroup:
    """The layout of one trial's workers from the space's ``resources``."""
    return WorkerGroup(resources.workers_per_trial, resources.cpus_per_trial, resources.gpus_per_trial)


def start_registry():
    """The registry actor of this driver (no resources; it ends with the driver). It lives on the driver's node:
    placed on another node it would die with that node (a lost worker node), and with it every later lookup."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(WorkerGroupRegistry).options(scheduling_strategy=here).remote()


def remove_placement_group(group_id: str) -> None:
    """Remove the placement group with this hex id, if Ray still holds it."""
    import ray
    from ray.util.placement_group import PlacementGroup

    state = ray.util.placement_group_table().get(group_id, {}).get("state")
    if state in (None, "REMOVED"):
        return
    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))


class WorkerGroupReaper(tune.Callback):
    """Removes the Train workers' placement groups no running data-parallel trial uses any more."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self._removed: set[str] = set()
        self._looked = 0.0

    def trial_process(self, pid: int) -> Optional[tuple[str, str]]:
        """(trial id, "worker r" or "coordinator") of a data-parallel trial's process, or None."""
        import ray

        try:
            return ray.get(self.registry.process.remote(pid), timeout=5)
        except Exception:  # noqa: BLE001  (the registry gone or slow: the line is printed without the trial)
            return None

    def __getstate__(self) -> dict:
        return {"registry": None, "_removed": set(), "_looked": 0.0}  # a restored driver brings its own

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if self.registry is None or now - self._looked < _LOOK_EVERY_SECONDS:
            return
        self._looked = now
        self.reap(trials)

    def on_experiment_end(self, trials, **info):
        if self.registry is not None:
            self.reap(trials, everything=True)

    def reap(self, trials, everything: bool = False) -> None:
        import ray

        running = {trial.trial_id for trial in trials if trial.status == "RUNNING" and not everything}
        try:
            recorded = ray.get(self.registry.groups.remote())
        except ray.exceptions.RayActorError as error:  # its node died with the driver's: nothing left to reap
            logger.warning("data-parallel placement groups are no longer tracked (%s)", type(error).__name__)
            self.registry = None
            return
        for trial_id, groups in recorded.items():
            stale = groups if trial_id not in running else groups[:-1]  # the latest attempt's group is in use
            for group in stale:
                if group not in self._removed:
                    remove_placement_group(group)
                    self._removed.add(group)
