"""Seconds per training iteration of one trial config, measured with the real engine.

``lic-search estimate`` calls :func:`seconds_per_iteration` once per distinct step
configuration. It runs :meth:`trainables.engine.Trainer.train` itself (no second training
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
from pathlib import Path
from typing import Optional

import torch

from trainables import metrics as M
from trainables.config import TrialConfig

__all__ = ["device_label", "seconds_per_iteration"]


def device_label(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 2 threads)``: what the timings were taken on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def seconds_per_iteration(config: dict, steps: int = 30, warmup: int = 10, data: Optional[Path] = None,
                          device: Optional[torch.device] = None) -> float:
    """Mean seconds per iteration of the trial ``config`` (a plain trial dict) over at least
    ``steps`` timed iterations (rounded up to whole intervals of ``warmup``).

    ``data``: train (and evaluate) on this image folder instead of the config's; the step
    time depends on crop and batch size, not on which images are cropped.
    """
    from trainables.engine import Trainer

    plain = copy.deepcopy(config)
    schedule = plain.setdefault("schedule", {})
    intervals = max(1, math.ceil(steps / warmup))
    schedule.update(iterations=warmup * (1 + intervals), eval_every=warmup, warmup=0)
    plain.setdefault("data", {})["max_eval_images"] = 1
    if data is not None:
        plain["data"]["train"] = str(data)
        plain["data"]["eval"] = str(data)
    trainer = Trainer(TrialConfig.model_validate(plain), device=device)
    timed = list(trainer.train())[1:]
    # Total time over total steps: intervals are equally long, so the mean of 1/rate.
    return sum(1.0 / r[M.TRAIN_ITERS_PER_S] for r in timed) / len(timed)
