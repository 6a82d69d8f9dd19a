"""The settle rule of a ladder's fine-tunes: stop a fine-tune once its rate and R-D loss have settled.

How long a fine-tuned rate point needs depends on how far its λ is from its source's, on the
model and on the learning rate (issue 34: a fixed length left fine-tuned points at five times
their target rate). So a fine-tune gets a budget cap (``ladder.fine_tune``'s
``schedule.iterations``) plus this rule (``ladder.settle``): it ends as soon as ``eval/bpp`` and
``eval/rd_loss`` of its last ``evaluations`` evaluations all lie within ``tolerance`` percent of
the latest. :func:`settled` is the rule itself (``bench/ladder.py`` uses it too);
:class:`SettleStopper` applies it to the fine-tune phase through Ray Tune's public ``Stopper``
interface and keeps why each trial stopped for the MLflow logger and the console.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

from ray.tune.stopper import Stopper

from trainables import metrics as M

SETTLE_METRICS = (M.EVAL_BPP, M.EVAL_RD_LOSS)


def settled(history: Sequence[Mapping], tolerance: float, evaluations: int) -> Optional[str]:
    """Why the run has settled (a sentence), or None: the last ``evaluations`` evaluations of
    each of :data:`SETTLE_METRICS` lie within ``tolerance`` percent of the latest value."""
    if len(history) < evaluations:
        return None
    window = history[-evaluations:]
    for metric in SETTLE_METRICS:
        values = [float(result.get(metric, math.nan)) for result in window]
        if not all(math.isfinite(v) for v in values) or values[-1] == 0:
            return None
        if (max(values) - min(values)) / abs(values[-1]) * 100.0 >= tolerance:
            return None
    iteration = int(window[-1].get(M.ITERATIONS, 0))
    return (f"settled at iteration {iteration}: {' and '.join(SETTLE_METRICS)} changed less than "
            f"{tolerance:g}% over the last {evaluations} evaluations")


class SettleStopper(Stopper):
    """Stops each trial whose evaluations have settled (:func:`settled`); ``reasons`` says which and why.

    A resumed phase starts a fresh history: a restored trial needs ``evaluations`` more
    evaluations before it can settle (never fewer, so it never stops earlier than it would have)."""

    def __init__(self, tolerance: float, evaluations: int,
                 on_settle: Optional[Callable[[dict[str, str]], None]] = None) -> None:
        self.tolerance, self.evaluations = tolerance, evaluations
        self.history: dict[str, list[dict]] = {}
        self.reasons: dict[str, str] = {}
        self.on_settle = on_settle  # gets ``reasons`` after each trial settles (the phase folder keeps them)

    def __call__(self, trial_id: str, result: dict) -> bool:
        if M.is_notice(result) or M.EVAL_BPP not in result:
            return False
        history = self.history.setdefault(trial_id, [])
        history.append({key: result.get(key) for key in (*SETTLE_METRICS, M.ITERATIONS)})
        reason = settled(history, self.tolerance, self.evaluations)
        if reason is None:
            return False
        if trial_id not in self.reasons:
            print(f"ladder: fine-tune {trial_id} {reason}", flush=True)
            self.reasons[trial_id] = reason
            if self.on_settle is not None:
                self.on_settle(self.reasons)
        return True

    def stop_all(self) -> bool:
        return False

    def __getstate__(self) -> dict:  # Tune pickles the stopper with its state: the driver's writer stays here
        return {**self.__dict__, "on_settle": None}


__all__ = ["SETTLE_METRICS", "settled", "SettleStopper"]
