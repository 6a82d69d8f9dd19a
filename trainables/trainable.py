"""The Ray Tune function trainable: one trial = one :class:`~trainables.engine.Trainer`.

Each evaluation reports the metrics (``iterations``, ``eval/rd_loss``, ...) together with a
checkpoint, so ASHA can stop the trial at any rung and a paused, failed or preempted trial
continues from its last evaluation (``tune.get_checkpoint``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import TrialConfig
from trainables.engine import Trainer
from trainables.metrics import NODE_ID


def _threads_for_trial() -> int:
    """Use the CPUs Ray granted this trial, so packed trials do not oversubscribe the cores."""
    try:
        from ray import tune

        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    except Exception:
        cpus = os.cpu_count() or 1
    return max(1, int(cpus))


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def train_lic(config: dict) -> None:
    """Ray Tune entry point. ``config`` is a nested dict shaped like :class:`TrialConfig`."""
    from ray import tune

    torch.set_num_threads(_threads_for_trial())
    trial_config = TrialConfig.model_validate(config)
    trainer = Trainer(trial_config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(load_checkpoint(Path(folder), map_location=trainer.device))
    node = _node_id()
    for result in trainer.train():
        result[NODE_ID] = node
        with tempfile.TemporaryDirectory(prefix="lic-ckpt-") as folder:
            save_checkpoint(trainer.state_dict(), Path(folder))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
