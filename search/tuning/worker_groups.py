"""Data-parallel trials seen from the driver: their worker layout, and their placement groups.

A data-parallel trial's Train workers live in a placement group that the Train controller
creates and releases. When Tune stops (ASHA) or pauses (PBT) such a trial it ends the trial's
coordinator, and the Train controller with it, before the controller could release the group;
Ray keeps such a group for the job's lifetime, so its CPUs and GPUs would stay taken for the
rest of the search. :class:`WorkerGroupReaper` removes the group of every trial that is no
longer running (the trials report its id with each result).
"""

from __future__ import annotations

from typing import Any

from ray import tune

from trainables.training.data_parallel_trainable import PLACEMENT_GROUP, WorkerGroup


def worker_group(resources: Any) -> WorkerGroup:
    """The layout of one trial's workers from the space's ``resources``."""
    return WorkerGroup(resources.workers_per_trial, resources.cpus_per_trial, resources.gpus_per_trial)


def remove_placement_group(group_id: str) -> None:
    """Remove the placement group with this hex id, if Ray still holds it."""
    import ray
    from ray.util.placement_group import PlacementGroup

    state = ray.util.placement_group_table().get(group_id, {}).get("state")
    if state in (None, "REMOVED"):
        return
    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))


class WorkerGroupReaper(tune.Callback):
    """Removes the Train workers' placement group of each data-parallel trial that stopped running."""

    def __init__(self) -> None:
        self._groups: dict[str, str] = {}  # trial id -> placement group of its latest attempt

    def __getstate__(self) -> dict:
        return {"_groups": {}}  # a restored driver's Ray holds none of the old groups

    def on_trial_result(self, iteration, trials, trial, result, **info):
        group = result.get(PLACEMENT_GROUP)
        if group:
            self._groups[trial.trial_id] = group

    def on_step_begin(self, iteration, trials, **info):
        for trial in trials:
            if trial.trial_id in self._groups and trial.status != "RUNNING":
                remove_placement_group(self._groups.pop(trial.trial_id))

    def on_experiment_end(self, trials, **info):
        for group in self._groups.values():
            remove_placement_group(group)
        self._groups.clear()
