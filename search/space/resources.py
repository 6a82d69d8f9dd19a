"""``resources`` rules a space must meet before any trial starts (data-parallel splits).

With ``workers_per_trial: N`` > 1 a trial's totals are split evenly over its N workers: each
gets ``cpus_per_trial / N`` CPUs (a whole number: its torch threads) and ``gpus_per_trial / N``
GPUs (a whole number: DDP gives each worker its own devices), and each trial's global batch
``data.batch_size`` (and every ``data.crop_schedule`` stage's) splits into N equal shares.
"""

from __future__ import annotations

from typing import Iterable

from search.errors import SpaceError
from trainables.config import TrialConfig


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def check_resources(file: str, resources, trials: Iterable[TrialConfig]) -> None:
    """Raise :class:`SpaceError` at the key path of the first split that does not divide evenly."""
    workers = resources.workers_per_trial
    if workers == 1:
        return
    rule = f"resources.workers_per_trial is {workers}: the trial's totals are split evenly over its workers"
    cpus = resources.cpus_per_trial / workers
    if not _whole(cpus):
        raise SpaceError(file, "resources.cpus_per_trial", f"{resources.cpus_per_trial:g} gives {cpus:g} CPU per "
                         f"worker ({rule}; each worker needs whole CPUs: use a multiple of {workers})")
    gpus = resources.gpus_per_trial / workers
    if not _whole(gpus):
        raise SpaceError(file, "resources.gpus_per_trial", f"{resources.gpus_per_trial:g} gives {gpus:g} GPU per "
                         f"worker ({rule}; a data-parallel worker needs whole GPUs: use 0 or a multiple of "
                         f"{workers})")
    for trial in trials:
        data = trial.data
        if data.batch_size % workers:
            raise SpaceError(file, "trial.data.batch_size", f"{data.batch_size} does not split into {workers} equal "
                             f"shares (it is the global batch; {rule}): use a multiple of {workers}")
        for index, stage in enumerate(data.crop_schedule or []):
            if stage.batch_size is not None and stage.batch_size % workers:
                raise SpaceError(file, f"trial.data.crop_schedule[{index}]", f"batch_size {stage.batch_size} does "
                                 f"not split into {workers} equal shares ({rule}): use a multiple of {workers}")
