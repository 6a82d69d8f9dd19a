"""The Ray Tune function trainable: one trial = one :class:`~trainables.training.engine.Trainer`.

Each evaluation reports the metrics (``iterations``, ``eval/rd_loss``, ...) together with a
checkpoint, so ASHA can stop the trial at any rung and a paused, failed or preempted trial
continues from its last checkpoint (``tune.get_checkpoint``). Between evaluations a checkpoint is
also reported every ``schedule.checkpoint_minutes`` and on SIGTERM (:mod:`trainables.training.preemption`),
as a *notice* result (``notice``, NaN scores) that schedulers, searchers and MLflow histories skip.
A checkpoint that fails its checksums or does not load is skipped for the newest one of the
trial that loads, and named in a notice.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.errors import LicSearchError, TrainingDivergedError
from trainables.training.checkpoint import MANIFEST_FILE, load_checkpoint, restore_candidates, save_checkpoint
from trainables.training.engine import Trainer
from trainables.training.preemption import (
    PREEMPTED,
    CheckpointClock,
    PreemptibleTrainable,
    TrialPreempted,
    stop_requested,
)
from trainables.training.warm_start import warm_start_result


def _trial_resources() -> dict[str, float]:
    try:
        from ray import tune

        return dict(tune.get_context().get_trial_resources().required_resources)
    except Exception:  # called outside a Tune trial (tests, benchmarks)
        return {"CPU": float(os.cpu_count() or 1)}


def threads_for(resources: dict[str, float]) -> int:
    """Use the CPUs Ray granted this trial, so packed trials do not oversubscribe the cores."""
    return max(1, int(resources.get("CPU", 1)))


def gpu_memory_fraction(resources: dict[str, float]) -> Optional[float]:
    """The share of one GPU's memory a fractional-GPU trial may use (Ray does not enforce it)."""
    share = resources.get("GPU", 0.0)
    return share if 0.0 < share < 1.0 else None


def apply_resource_limits(resources: dict[str, float]) -> None:
    torch.set_num_threads(threads_for(resources))
    fraction = gpu_memory_fraction(resources)
    if fraction is not None and torch.cuda.is_available():
        # Trials packed on one GPU (gpus_per_trial: 0.25) each get at most their share of its
        # memory; an over-eager trial then fails alone instead of taking its neighbours down.
        torch.cuda.set_per_process_memory_fraction(fraction)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _nan_scores() -> dict[str, float]:
    """NaN for every score a scheduler or searcher may read (Ray requires their metrics in every result)."""
    return {name: math.nan for name in vars(M).values()
            if isinstance(name, str) and name.startswith(("eval/", "train/"))}


def diverged_result(error: TrainingDivergedError, iteration: int) -> dict:
    """The last result of a diverged trial: the reason, and NaN for every score a scheduler or searcher may read.

    Reported instead of raising: a raised error is retried ``max_failures`` times and restarted
    by ``resume``, and since resume is exact each retry diverges again at the same iteration.
    """
    reason = f"{type(error).__name__}: {error}"
    return _nan_scores() | {M.ITERATIONS: iteration, M.DIVERGED: 1, M.DIVERGED_REASON: reason}


def notice_result(kind: str, iteration: int, **fields) -> dict:
    """A result that is not an evaluation (a checkpoint between evaluations, a restore that skipped damage)."""
    return _nan_scores() | fields | {M.ITERATIONS: iteration, M.NOTICE: kind}


class Restored(NamedTuple):
    """What :func:`restore` loaded, and what it skipped or could not verify on the way."""

    checkpoint: Any  # the ray.tune.Checkpoint loaded
    damaged: list[str]  # "path: problem" of each newer one skipped
    unverified: bool  # it has no checksums.json (written before checksums were recorded): loaded as it is


def restore(trainer: Trainer, checkpoint, trial_id: Optional[str]) -> Restored:
    """Load the first candidate checkpoint (:func:`restore_candidates`) that verifies and loads. Any failure
    to read or load one (checksums, a truncated file, an OSError of remote storage, a ``load_state_dict``
    mismatch) is damage: named, printed, and the next older one tried. None loads: a :class:`LicSearchError`
    naming every file tried. One-process and data-parallel trials (rank 0) restore through here."""
    damaged: list[str] = []
    for candidate in restore_candidates(checkpoint, trial_id):
        try:
            with candidate.as_directory() as folder:
                state = load_checkpoint(Path(folder), map_location=trainer.device)
                unverified = not (Path(folder) / MANIFEST_FILE).is_file()
            trainer.load_state_dict(state)
        except Exception as error:  # noqa: BLE001  (whatever keeps it from loading is damage: say what)
            if candidate is not checkpoint and "no checkpoint at" in str(error):
                continue  # removed meanwhile (Ray keeps only the newest few): not damage
            problem = str(error).split(": ", 1)[-1] if isinstance(error, LicSearchError) else \
                f"{type(error).__name__}: {error}"
            damaged.append(f"{candidate.path}: {problem}")
            print(f"lic-search: skipping damaged checkpoint {candidate.path}: {problem}")
            continue
        if unverified:
            print(f"lic-search: checkpoint {candidate.path} has no {MANIFEST_FILE} (written before checksums "
                  "were recorded): loaded without verifying it")
        return Restored(candidate, damaged, unverified)
    raise LicSearchError("no checkpoint of this trial loads: " + "; ".join(damaged))


def restored_notice(restored: Restored, iteration: int, **fields) -> Optional[dict]:
    """The notice result saying what a restore skipped or could not verify (None: nothing to say)."""
    if not restored.damaged and not restored.unverified:
        return None
    said = {M.DAMAGED_CHECKPOINTS: "\n".join(restored.damaged)} if restored.damaged else {}
    if restored.unverified:
        said[M.UNVERIFIED_CHECKPOINT] = str(restored.checkpoint.path)
    return notice_result(M.NOTICE_RESTORED, iteration, **fields, **said)


def _trial_id() -> Optional[str]:
    try:
        from ray import tune

        return tune.get_context().get_trial_id()
    except Exception:  # outside a Tune trial
        return None


def train_lic(config: dict) -> None:
    """Ray Tune entry point. ``config`` is a nested dict shaped like :class:`TrialConfig`."""
    from ray import tune

    apply_resource_limits(_trial_resources())
    trial_config = TrialConfig.model_validate(config)
    checkpoint = tune.get_checkpoint()
    trainer = Trainer(trial_config, warm_start=checkpoint is None)
    started_from = warm_start_result(trainer.warm_start)
    node = _node_id()
    if checkpoint is not None:
        notice = restored_notice(restore(trainer, checkpoint, _trial_id()), trainer.iteration, **{M.NODE_ID: node})
        if notice is not None:  # said now, not at the next evaluation: the console and the run's tags name them
            tune.report(notice)
    restored_at = {M.RESTORED_AT: trainer.iteration} if checkpoint is not None else {}
    clock = CheckpointClock(trial_config.schedule.checkpoint_minutes)
    try:
        for result in trainer.train(checkpoint_due=clock.due):
            if M.NOTICE in result:
                result = notice_result(result[M.NOTICE], result[M.ITERATIONS])
            result.update(restored_at)
            result[M.NODE_ID] = node
            result.update(started_from)
            with tempfile.TemporaryDirectory(prefix="lic-ckpt-") as folder:
                save_checkpoint(trainer.state_dict(), Path(folder))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            clock.restart()
            if stop_requested():
                if result.get(M.NOTICE) != PREEMPTED:  # told while evaluating: that checkpoint is the one to resume
                    tune.report(notice_result(PREEMPTED, trainer.iteration, **restored_at, **{M.NODE_ID: node}))
                raise TrialPreempted(f"SIGTERM: checkpointed at iteration {trainer.iteration} on node {node}; "
                                     "the trial continues from there")
    except TrainingDivergedError as error:
        # Terminal, unlike a crash: the trial ends here (no checkpoint of the NaN state) and
        # Ray records it as finished, so neither FailureConfig nor `resume` runs it again.
        tune.report(diverged_result(error, trainer.iteration) | {M.NODE_ID: node})


# Ray Tune builds the trial actor's class from this function with these mixins (tune.with_parameters
# keeps them): SIGTERM then asks for a checkpoint instead of exiting (trainables.training.preemption).
train_lic.__mixins__ = (PreemptibleTrainable,)
