"""The Ray Tune function trainable: one trial = one :class:`~trainables.training.engine.Trainer`.

Each evaluation reports the metrics (``iterations``, ``eval/rd_loss``, ...) together with a
checkpoint, so ASHA can stop the trial at any rung and a paused, failed or preempted trial
continues from its last evaluation (``tune.get_checkpoint``).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.errors import TrainingDivergedError
from trainables.training.checkpoint import load_checkpoint, save_checkpoint
from trainables.training.engine import Trainer
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


def diverged_result(error: TrainingDivergedError, iteration: int) -> dict:
    """The last result of a diverged trial: the reason, and NaN for every score a scheduler or searcher may read.

    Reported instead of raising: a raised error is retried ``max_failures`` times and restarted
    by ``resume``, and since resume is exact each retry diverges again at the same iteration.
    """
    scores = {name: math.nan for name in vars(M).values()
              if isinstance(name, str) and name.startswith(("eval/", "train/"))}
    return scores | {M.ITERATIONS: iteration, M.DIVERGED: 1, M.DIVERGED_REASON: f"{type(error).__name__}: {error}"}


def train_lic(config: dict) -> None:
    """Ray Tune entry point. ``config`` is a nested dict shaped like :class:`TrialConfig`."""
    from ray import tune

    apply_resource_limits(_trial_resources())
    trial_config = TrialConfig.model_validate(config)
    checkpoint = tune.get_checkpoint()
    trainer = Trainer(trial_config, warm_start=checkpoint is None)
    started_from = warm_start_result(trainer.warm_start)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(load_checkpoint(Path(folder), map_location=trainer.device))
    node = _node_id()
    try:
        for result in trainer.train():
            result[M.NODE_ID] = node
            result.update(started_from)
            with tempfile.TemporaryDirectory(prefix="lic-ckpt-") as folder:
                save_checkpoint(trainer.state_dict(), Path(folder))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
    except TrainingDivergedError as error:
        # Terminal, unlike a crash: the trial ends here (no checkpoint of the NaN state) and
        # Ray records it as finished, so neither FailureConfig nor `resume` runs it again.
        tune.report(diverged_result(error, trainer.iteration) | {M.NODE_ID: node})
