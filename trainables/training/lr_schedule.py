"""The learning-rate schedule of a trial: linear warm-up, then step, cosine or plateau decay.

``lr(iteration) = schedule.lr · lr_factor(iteration)``. Step and cosine are pure functions of
the iteration; plateau also depends on the evaluations seen so far, so :class:`LrSchedule`
keeps that state and the trainer checkpoints it (``state_dict``) for an exact resume.

- ``step``: ×``gamma`` from each milestone ``round(fraction · iterations)`` on (the paper's
  recipe: ×0.1 at 0.55 M of 0.6 M).
- ``cosine``: from ``lr`` at the end of warm-up down to ``min_lr`` at the last iteration,
  ``min_lr + (lr − min_lr) · ½(1 + cos(π·t))`` with ``t`` the share of the post-warm-up budget done.
- ``plateau``: ×``gamma`` once ``patience`` evaluations in a row have not lowered the best
  ``eval/rd_loss`` (then the count restarts), never below ``min_lr``. PyTorch's
  ``ReduceLROnPlateau(patience=p)`` waits for p + 1 such epochs; here ``patience`` counts the
  evaluations themselves, and any decrease counts as an improvement (no threshold).
"""

from __future__ import annotations

import math
from typing import Any

from trainables.config import ScheduleConfig


def _warmup(iteration: int, schedule: ScheduleConfig) -> float:
    if schedule.warmup and iteration < schedule.warmup:
        return (iteration + 1) / schedule.warmup
    return 1.0


def lr_factor(iteration: int, schedule: ScheduleConfig, plateau_factor: float = 1.0) -> float:
    """Multiplier of ``schedule.lr`` at ``iteration`` (``plateau_factor``: the decays plateau has made)."""
    factor = _warmup(iteration, schedule)
    if schedule.decay == "step":
        for fraction in schedule.milestones:
            if iteration >= int(round(fraction * schedule.iterations)):
                factor *= schedule.gamma
        return factor
    floor = (schedule.min_lr or 0.0) / schedule.lr
    if schedule.decay == "cosine":
        span = max(schedule.iterations - schedule.warmup, 1)
        done = min(max(iteration - schedule.warmup, 0), span) / span
        return factor * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done)))
    return factor * max(plateau_factor, floor)


class LrSchedule:
    """A trial's lr factors plus the plateau state (best loss, evaluations without improvement, decays)."""

    def __init__(self, schedule: ScheduleConfig) -> None:
        self.schedule = schedule
        self.best = math.inf
        self.bad_evaluations = 0
        self.plateau_factor = 1.0

    def factor(self, iteration: int) -> float:
        return lr_factor(iteration, self.schedule, self.plateau_factor)

    def observe(self, eval_loss: float) -> bool:
        """Record one evaluation's R-D loss; True when plateau just decayed the lr."""
        if self.schedule.decay != "plateau":
            return False
        if math.isfinite(eval_loss) and eval_loss < self.best:
            self.best, self.bad_evaluations = eval_loss, 0
            return False
        self.bad_evaluations += 1
        if self.bad_evaluations < (self.schedule.patience or 1):
            return False
        self.bad_evaluations = 0
        floor = (self.schedule.min_lr or 0.0) / self.schedule.lr
        if self.plateau_factor <= floor:
            return False  # already at min_lr
        self.plateau_factor = max(self.plateau_factor * self.schedule.gamma, floor)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations, "plateau_factor": self.plateau_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_evaluations = int(state["bad_evaluations"])
        self.plateau_factor = float(state["plateau_factor"])
