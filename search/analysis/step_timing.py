"""Seconds per training iteration of one trial config, measured with the real engine.

``lic-search estimate`` calls :func:`seconds_per_iteration` once per distinct step
configuration. It runs :meth:`trainables.training.engine.Trainer.train` itself (no second training
loop), evaluating (on one eval image) every ``warmup`` iterations: the first interval warms
up (worker start, cuDNN autotuning, ``torch.compile``), the following ones are timed with
the engine's own ``train/iters_per_s``, which covers data loading, forward, backward and
both optimizers and excludes the evaluations (the engine syncs with the device before it
reads the clock).
"""

from __future__ import annotations

import copy
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from trainables import metrics as M
from trainables.config import TrialConfig

__all__ = ["device_label", "TimedRun", "timed_run", "seconds_per_iteration"]


def device_label(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 2 threads)``: what the timings were taken on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


@dataclass
class TimedRun:
    """A short real training run: its seconds per iteration, the trainer and every evaluation."""

    seconds_per_iteration: float
    trainer: Any
    results: list[dict[str, float]]


def timed_run(config: dict, steps: int = 30, warmup: int = 10, data: Optional[Path] = None,
              device: Optional[torch.device] = None, before_train: Optional[Callable[[], None]] = None,
              eval_images: int = 1) -> TimedRun:
    """Train ``config`` (a plain trial dict) for ``warmup`` + at least ``steps`` iterations
    (rounded up to whole intervals of ``warmup``), evaluating every ``warmup`` on ``eval_images`` image(s).

    ``data``: train (and evaluate) on this image folder instead of the config's; the step
    time depends on crop and batch size, not on which images are cropped. ``before_train``
    runs after the model and optimizers are built, just before the first step (a barrier
    for trials started together).
    """
    from trainables.training.engine import Trainer

    plain = copy.deepcopy(config)
    schedule = plain.setdefault("schedule", {})
    intervals = max(1, math.ceil(steps / warmup))
    schedule.update(iterations=warmup * (1 + intervals), eval_every=warmup, warmup=0)
    plain.setdefault("data", {})["max_eval_images"] = eval_images
    if data is not None:
        plain["data"]["train"] = str(data)
        plain["data"]["eval"] = str(data)
    trainer = Trainer(TrialConfig.model_validate(plain), device=device)
    if before_train is not None:
        before_train()
    results = list(trainer.train())
    # Total time over total steps: the timed intervals are equally long, so the mean of 1/rate.
    seconds = sum(1.0 / r[M.TRAIN_ITERS_PER_S] for r in results[1:]) / len(results[1:])
    return TimedRun(seconds, trainer, results)


def seconds_per_iteration(config: dict, steps: int = 30, warmup: int = 10, data: Optional[Path] = None,
                          device: Optional[torch.device] = None) -> float:
    """Mean seconds per iteration of the trial ``config`` over at least ``steps`` timed iterations."""
    return timed_run(config, steps, warmup, data, device).seconds_per_iteration
