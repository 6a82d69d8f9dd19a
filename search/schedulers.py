"""Trial schedulers (ASHA, FIFO) built from a space's ``scheduler`` section."""

from __future__ import annotations

from search.space import SearchSpec
from trainables import metrics as M


def build_scheduler(spec: SearchSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    config = spec.file.scheduler
    if config.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=M.ITERATIONS, metric=spec.file.search.metric, mode=spec.file.search.mode,
        max_t=spec.budget(), grace_period=config.grace_period,
        reduction_factor=config.reduction_factor, brackets=config.brackets,
    )
