"""A data-parallel trial (``resources.workers_per_trial`` > 1): Ray Train V2's Tune integration.

The Tune trial is the coordinator: it starts a :class:`ray.train.torch.TorchTrainer` whose N
workers run :func:`train_worker` (PyTorch DDP, gloo on CPUs, NCCL on GPUs; see
:mod:`trainables.training.data_parallel`). The Tune checkpoint stays the only one that decides
where training resumes, so ASHA, PBT (clones), retries and ``resume`` work as for a one-process
trial:

* rank 0 reports each evaluation with its checkpoint through ``ray.train.report``; a Train
  callback (on the Train controller) hands both to the coordinator through a Ray queue, which
  ``tune.report`` s them: Tune copies the checkpoint into the trial folder as usual;
* the workers start from ``tune.get_checkpoint()``; the Train run folder of an earlier attempt
  is removed first, so Train never restores a checkpoint of its own in its place;
* Train retries nothing (``FailureConfig(max_failures=0)``): a worker that dies ends the
  attempt, and Tune retries the trial from its checkpoint under ``resources.max_failures``;
* the preemption protocol of one-process trials (:mod:`trainables.training.preemption`) holds for
  the whole group: SIGTERM to any worker or to the coordinator makes every rank checkpoint (rank 0
  reports it) and stop at the same next iteration, and the coordinator ends the attempt as a
  preemption (not a failure); the checkpoint clock runs on every rank alike; the restore is the
  one-process trial's (newest first past damaged checkpoints, :func:`trainables.training.trainable.restore`).

Rank 0 tells the driver's :class:`WorkerGroupRegistry` which placement group holds the workers,
as soon as it starts: when Tune stops or pauses the trial (or its coordinator dies) the Train
controller ends with the coordinator, before it could release the group, and the driver removes
it (``search.tuning.worker_groups``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainables import metrics as M
from trainables.errors import LicSearchError, TrainingDivergedError
from trainables.training.preemption import PREEMPTED, PreemptibleTrainable, TrialPreempted, stop_requested

#: What the coordinator itself reserves (it only waits on the Train run): the rest of
#: ``cpus_per_trial`` goes to the workers, so the trial's total is ``cpus_per_trial``.
COORDINATOR_CPUS = 0.01

_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerGroup:
    """How one trial's workers are laid out (from the space's ``resources``)."""

    workers: int
    cpus_per_trial: float
    gpus_per_trial: float

    @property
    def cpus_per_worker(self) -> float:
        """Reserved per worker: the trial's CPUs less the coordinator's, split evenly (rounded down to Ray's 1e-4)."""
        return int((self.cpus_per_trial - COORDINATOR_CPUS) / self.workers * 10_000) / 10_000

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus_per_trial / self.workers

    @property
    def threads_per_worker(self) -> int:
        """Torch threads of one worker: its whole share of ``cpus_per_trial``."""
        return max(1, int(self.cpus_per_trial // self.workers))

    def worker_resources(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker > 0:
            resources["GPU"] = self.gpus_per_worker
        return resources


class WorkerGroupRegistry:
    """A Ray actor the driver starts: trial id -> placement groups its workers started in, oldest first; and
    which trial each worker and coordinator process belongs to (by pid)."""

    def __init__(self) -> None:
        self._groups: dict[str, list[str]] = {}
        self._processes: dict[int, tuple[str, str]] = {}  # pid -> (trial id, "worker r" or "coordinator")

    def record(self, trial_id: str, group_id: str) -> None:
        self._groups.setdefault(trial_id, []).append(group_id)

    def record_process(self, trial_id: str, pid: int, role: str) -> None:
        """A process of the trial (a rank, or its coordinator): the console names the trial when Ray says it died."""
        self._processes[int(pid)] = (trial_id, role)

    def process(self, pid: int) -> Optional[tuple[str, str]]:
        return self._processes.get(int(pid))

    def groups(self) -> dict[str, list[str]]:
        return self._groups


# ------------------------------------------------------------------------ workers
def _watch_coordinator(stop) -> None:
    """Rank 0: when the coordinator got SIGTERM (it puts into ``stop``), stop as if this process had."""
    from trainables.training.preemption import request_stop

    def wait() -> None:
        try:
            stop.get(block=True)
        except Exception:  # noqa: BLE001  (the queue ended with the attempt: nothing to pass on)
            return
        request_stop()

    threading.Thread(target=wait, name="lic-coordinator-stop", daemon=True).start()


def _restore(trainer, checkpoint, trial_id: str, shard) -> Optional[dict]:
    """Rank 0 restores as a one-process trial does (newest first past damage, :func:`trainable.restore`); the
    other ranks load the checkpoint it chose. Returns rank 0's notice of what it skipped (None: nothing)."""
    from trainables.training import data_parallel
    from trainables.training.trainable import restore, restored_notice

    if shard.rank == 0:
        restored = restore(trainer, checkpoint, trial_id)
        data_parallel.from_rank0(restored.checkpoint.path)
        return restored_notice(restored, trainer.iteration)
    chosen = data_parallel.from_rank0(None)
    restore(trainer, type(checkpoint)(chosen, checkpoint.filesystem), None)
    return None


def train_worker(loop_config: dict) -> None:
    """One rank of the trial: the engine on its share of every batch, rank 0 reporting.

    Between evaluations the ranks agree each iteration whether a checkpoint is due (the clock, or
    SIGTERM to any of them or to the coordinator); rank 0 then reports one, and after a SIGTERM
    checkpoint every rank returns: the coordinator ends the attempt as a preemption."""
    import ray
    import torch
    from ray import train

    from trainables.config import TrialConfig
    from trainables.data.file_index import use_train_indexes
    from trainables.shard import Shard
    from trainables.training import data_parallel
    from trainables.training.checkpoint import save_checkpoint
    from trainables.training.engine import Trainer
    from trainables.training.preemption import CLOCK, PREEMPTED, CheckpointClock
    from trainables.training.trainable import diverged_result, notice_result
    from trainables.training.warm_start import warm_start_result

    context = train.get_context()
    shard = Shard(context.get_world_rank(), context.get_world_size())
    torch.set_num_threads(int(loop_config["threads"]))
    group = ray.util.get_current_placement_group()
    registry = loop_config.get("registry")
    if shard.rank == 0 and registry is not None and group is not None:
        registry.record.remote(loop_config["trial_id"], group.id.hex())
    if registry is not None:
        registry.record_process.remote(loop_config["trial_id"], os.getpid(), f"worker {shard.rank}")
    if shard.rank == 0 and loop_config.get("stop") is not None:
        _watch_coordinator(loop_config["stop"])
    identity: dict[str, Any] = {M.NODE_ID: ray.get_runtime_context().get_node_id()}
    with use_train_indexes(loop_config.get("train_indexes")):
        config = TrialConfig.model_validate(loop_config["config"])
        device = train.torch.get_device() if loop_config["use_gpu"] else torch.device("cpu")
        checkpoint = loop_config.get("checkpoint")
        trainer = Trainer(config, device=device, warm_start=checkpoint is None, shard=shard)
        identity.update(warm_start_result(trainer.warm_start))  # model.init_from: where the weights came from
        if checkpoint is not None:
            notice = _restore(trainer, checkpoint, loop_config["trial_id"], shard)
            identity[M.RESTORED_AT] = trainer.iteration
            if notice is not None:  # said now, not at the next evaluation (every rank reports: a barrier)
                train.report(notice | identity if shard.rank == 0 else identity)
        clock = CheckpointClock(config.schedule.checkpoint_minutes)
        try:
            for result in trainer.train(checkpoint_due=data_parallel.agreed(clock.due, (CLOCK, PREEMPTED))):
                notice = result.get(M.NOTICE)
                if shard.rank != 0:
                    train.report(identity)  # every rank reports (a barrier); rank 0's result is the trial's
                else:
                    if notice:
                        result = notice_result(notice, result[M.ITERATIONS])
                    with tempfile.TemporaryDirectory(prefix="lic-ckpt-") as folder:
                        save_checkpoint(trainer.state_dict(), Path(folder))
                        train.report(result | identity, checkpoint=train.Checkpoint.from_directory(folder))
                clock.restart()
                if notice == PREEMPTED:  # every rank agreed on it: all stop here
                    return
        except TrainingDivergedError as error:  # every rank raises at the same iteration
            train.report(diverged_result(error, trainer.iteration) | identity if shard.rank == 0 else identity)


def _sigterm_on_workers():
    """A Train worker callback: each worker process handles SIGTERM as a one-process trial does
    (:func:`trainables.training.preemption.install_sigterm_handler`). It runs in the worker actor's main
    thread (where Python runs signal handlers; the training function runs in another thread)."""
    from ray.train.v2._internal.execution.callback import WorkerCallback

    from trainables.training.preemption import install_sigterm_handler

    class SigtermRequestsCheckpoint(WorkerCallback):
        def after_init_train_context(self) -> None:
            install_sigterm_handler()

    return SigtermRequestsCheckpoint()


# -------------------------------------------------------------------- coordinator
def _forwarder(queue):
    from ray.train import UserCallback

    class ForwardToTune(UserCallback):
        """On the Train controller: each report of rank 0 (metrics, persisted checkpoint) to the coordinator."""

        def __init__(self, reports) -> None:
            self.reports = reports

        def after_report(self, run_context, metrics, checkpoint) -> None:
            # Never blocks the controller: its event loop also watches the workers.
            self.reports.put_nowait((dict(metrics[0]), checkpoint))

    return ForwardToTune(queue)


def _remove_run_folder(storage: str, name: str) -> None:
    """The Train run folder ``<storage>/<name>`` of an earlier attempt, if any (local path or URI)."""
    if "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
        return
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
    target = f"{path.rstrip('/')}/{name}"
    if filesystem.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
        filesystem.delete_dir(target)


def _check_train_v2() -> None:
    from ray.train.torch import TorchTrainer

    if not TorchTrainer.__module__.startswith("ray.train.v2"):
        raise LicSearchError("resources.workers_per_trial > 1 needs Ray Train V2 (RAY_TRAIN_V2_ENABLED=1, the "
                             "default of this Ray version); it is switched off in this environment")


def train_lic_data_parallel(config: dict, train_indexes: Optional[dict[str, str]] = None,
                            group: Optional[WorkerGroup] = None, storage: str = "", registry=None) -> None:
    """Ray Tune entry point of a data-parallel trial; ``storage`` holds the Train run folders, ``registry``
    (a :class:`WorkerGroupRegistry` actor) learns where the workers run.

    A SIGTERM checkpoint of the workers (or a SIGTERM to this coordinator, passed on to rank 0) ends the
    attempt as a one-process trial's does: :class:`TrialPreempted` once the workers have stopped."""
    from ray import train, tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    _check_train_v2()
    assert group is not None and storage, "the driver passes the worker group and the Train storage"
    name = tune.get_context().get_trial_id()
    if registry is not None:
        registry.record_process.remote(name, os.getpid(), "coordinator")
    _remove_run_folder(storage, name)
    reports = Queue(actor_options={"num_cpus": 0})
    stop = Queue(actor_options={"num_cpus": 0})  # the coordinator's SIGTERM, for rank 0
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "train_indexes": train_indexes, "threads": group.threads_per_worker,
                           "use_gpu": group.gpus_per_worker > 0, "checkpoint": tune.get_checkpoint(),
                           "registry": registry, "trial_id": name, "stop": stop},
        scaling_config=train.ScalingConfig(num_workers=group.workers, use_gpu=group.gpus_per_worker > 0,
                                           resources_per_worker=group.worker_resources()),
        run_config=train.RunConfig(name=name, storage_path=storage,
                                   callbacks=[_forwarder(reports), _sigterm_on_workers()],
                                   failure_config=train.FailureConfig(max_failures=0),
                                   checkpoint_config=train.CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # noqa: BLE001  (re-raised in the coordinator's thread)
            outcome["error"] = error

    runner = threading.Thread(target=fit, name="lic-train-run", daemon=True)
    runner.start()
    told, preempted = False, None
    while True:
        if not told and stop_requested():  # SIGTERM here: rank 0 checkpoints at its next iteration
            stop.put_nowait(True)
            told = True
        try:
            metrics, checkpoint = reports.get(timeout=_POLL_SECONDS)
        except Empty:
            if runner.is_alive():
                continue
            if reports.empty():
                break
            continue
        tune.report(metrics, checkpoint=checkpoint)
        if metrics.get(M.NOTICE) == PREEMPTED:
            preempted = metrics
    runner.join()
    if "error" in outcome:
        raise outcome["error"]
    _remove_run_folder(storage, name)  # Tune holds every checkpoint it needs
    if preempted is not None:
        raise TrialPreempted(f"SIGTERM: checkpointed at iteration {int(preempted[M.ITERATIONS])} on node "
                             f"{preempted.get(M.NODE_ID, '?')}; the trial continues from there")


# Ray Tune builds the coordinator's actor class with this mixin (as for one-process trials): SIGTERM to the
# coordinator asks the workers for a checkpoint instead of ending the attempt at once.
train_lic_data_parallel.__mixins__ = (PreemptibleTrainable,)


__all__ = ["COORDINATOR_CPUS", "WorkerGroup", "WorkerGroupRegistry", "train_worker", "train_lic_data_parallel"]
