"""One view of a search's progress, for the live console and ``lic-search status`` alike.

A :class:`SearchView` is plain data (trials with their state, iteration, budget, latest
metrics and wall time) built either from Ray's live trials (:mod:`search.monitor.console`) or from
the experiment folder (:mod:`search.monitor.status`); :func:`render` turns it into the few lines a
person reads: counts by state, each running trial's progress and scores, the best trial per
rate point, elapsed time, device-hours and an ETA.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from search.monitor import summary
from search.space.variants import Variants
from search.tracking import run_names
from trainables import metrics as M
from trainables.metrics import PerImage

STATES = ("pending", "running", "paused", "completed", "stopped", "errored")
RAY_STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "ERROR": "errored"}


@dataclass
class TrialView:
    """One trial's progress: ``state`` is one of :data:`STATES`."""

    trial_id: str
    state: str
    iteration: int
    budget: int
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # the latest result's numeric values
    seconds: float = 0.0  # wall time trained so far (Ray's time_total_s)
    per_image: Optional[PerImage] = None  # the scored evaluation's per-image results (ties at a rate point)


def trial_state(ray_status: str, result: Optional[dict], budget: int, settled: bool = False) -> str:
    """Ray's status in our words: a TERMINATED trial completed its budget, was stopped early by the
    scheduler, or diverged (a terminal, errored result). ``settled``: a ladder fine-tune that ended because its
    rate settled (``ladder.settle``), for which the budget was only a cap: completed."""
    if ray_status != "TERMINATED":
        return RAY_STATES.get(ray_status, ray_status.lower())
    result = result or {}
    if result.get(M.DIVERGED):
        return "errored"
    return "stopped" if int(result.get(M.ITERATIONS, 0) or 0) < budget and not settled else "completed"


def budget_of(config: dict) -> int:
    return int(run_names.raw_value(config, "schedule.iterations") or 0)


def numeric(result: Optional[dict]) -> dict[str, float]:
    """The numeric values of a result (what the view shows and JSON can hold)."""
    return {k: float(v) for k, v in (result or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class SearchView:
    """A search at one moment."""

    name: str
    folder: str
    trials: list[TrialView]
    expected: Optional[int] = None  # trials the space asks for (grid x num_samples)
    elapsed: Optional[float] = None  # seconds since the (latest) driver started
    device: str = "CPU"  # "GPU" when trials hold GPUs, else "CPU"
    per_trial: float = 1.0  # devices (GPUs, else CPUs) per trial, all its workers together
    ranking: summary.Ranking = field(default_factory=summary.Ranking)
    keys: Optional[list[str]] = None  # distinguishing keys (default: those varying across the trials)
    variants: Variants = field(default_factory=Variants)  # the space's labelled variants (names)
    workers: int = 1  # data-parallel workers per trial (resources.workers_per_trial)

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        if self.expected is not None:
            counts["pending"] += max(0, self.expected - len(self.trials))
        return counts

    def device_hours(self) -> float:
        """Sum of the trials' wall time x devices per trial (GPUs, or CPUs without GPUs), in hours."""
        return sum(t.seconds for t in self.trials) * self.per_trial / 3600.0

    def done_fraction(self) -> Optional[float]:
        """Share of the search's iteration budget behind it (finished trials count in full)."""
        total = self.expected or len(self.trials)
        if not total or not self.trials:
            return None
        budget = max((t.budget for t in self.trials), default=0) or 1
        done = sum(1.0 if t.state in ("completed", "stopped", "errored") else min(1.0, t.iteration / max(t.budget, 1))
                   for t in self.trials)
        return min(1.0, done / total) if budget else None

    def eta(self) -> Optional[float]:
        """Seconds left at the pace so far (an upper bound under ASHA, which stops trials early)."""
        fraction = self.done_fraction()
        if not fraction or self.elapsed is None:
            return None
        return self.elapsed * (1.0 - fraction) / fraction

    def best(self) -> list[summary.Best]:
        return summary.best_per_rate_point(self._scored(), self.ranking, self._keys(), self.variants)

    def fronts(self) -> list[summary.Front]:
        """A multi-objective search's Pareto front per rate point (none without ``ranking.objectives``)."""
        if not self.ranking.objectives:
            return []
        return summary.pareto_fronts(self._scored(), self.ranking, self._keys(), self.variants)

    def _scored(self) -> list[summary.Entry]:
        """The trials that may rank: all but the errored (a diverged trial's scores are NaN)."""
        return [summary.Entry(t.trial_id, t.config, t.metrics, t.per_image) for t in self.trials
                if t.state != "errored"]

    def _keys(self) -> list[str]:
        return self.keys if self.keys is not None else run_names.column_keys((t.config for t in self.trials),
                                                                             self.variants)

    def trial_name(self, trial: TrialView, keys: Sequence[str]) -> str:
        """The trial's readable name (its variant label first in a labelled space)."""
        return run_names.trial_name(trial.config, keys, self.variants.label_of(trial.config))

    def to_json(self) -> dict[str, Any]:
        keys = self._keys()
        return {
            "name": self.name, "folder": self.folder, "counts": self.counts(), "expected_trials": self.expected,
            "elapsed_s": self.elapsed, "eta_s": self.eta(), "device": self.device, "workers_per_trial": self.workers,
            "device_hours": self.device_hours(), "device_hours_unit": f"{self.device}-hours",
            "trials": [{**{k: v for k, v in asdict(t).items() if k not in ("config", "per_image")},
                        "name": self.trial_name(t, keys),
                        "varying": run_names.described(t.config, keys, self.variants.label_of(t.config))}
                       for t in self.trials],
            "best": [{"rate_point": b.stratum, "trial_id": b.trial_id, "name": b.name, "metrics": b.metrics,
                      "varying": b.varying, "runner_up": b.runner_up, "tied_with": b.tied_with}
                     for b in self.best()],
            "pareto_fronts": [{"rate_point": f.stratum, "objectives": [list(o) for o in self.ranking.objectives],
                               "trials": [{"trial_id": b.trial_id, "name": b.name, "metrics": b.metrics,
                                           "varying": b.varying} for b in f.trials]} for f in self.fronts()],
        }


def duration(seconds: Optional[float]) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _num(value: Any, digits: int = 4) -> str:
    return "-" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.{digits}g}"


def _db(value: Any) -> str:
    """PSNR with two decimals (19.00, not 19), so columns of them line up."""
    return "-" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.2f}"


def header(view: SearchView) -> str:
    """``9 trials: 2 running, 3 completed, 1 stopped, 3 pending · 1m05s · 0.02 CPU-hours · ETA 2m10s``."""
    counts = view.counts()
    total = sum(counts.values())
    parts = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    workers = f"{view.workers} workers per trial · " if view.workers > 1 else ""
    return (f"{total} trials: {parts or 'none yet'} · elapsed {duration(view.elapsed)} · {workers}"
            f"{view.device_hours():.2f} {view.device}-hours · ETA {duration(view.eta())}")


def trial_line(trial: TrialView, name: str, workers: int = 1) -> str:
    m = trial.metrics
    on = f"  {workers} workers" if workers > 1 else ""
    return (f"  {trial.trial_id} {trial.iteration}/{trial.budget} it{on}  rd_loss {_num(m.get(M.EVAL_RD_LOSS))}  "
            f"bpp {_num(m.get(M.EVAL_BPP))}  PSNR {_db(m.get(M.EVAL_PSNR))}  {name}")


def render(view: SearchView, max_running: int = 8) -> list[str]:
    """The view as lines: header, running trials (at most ``max_running``), best per rate point (a
    multi-objective search: its Pareto front per rate point)."""
    keys = view._keys()
    out = [header(view)]
    running = [t for t in view.trials if t.state == "running"]
    for trial in running[:max_running]:
        out.append(trial_line(trial, view.trial_name(trial, keys), view.workers))
    if len(running) > max_running:
        out.append(f"  ... and {len(running) - max_running} more running")
    answer = (summary.front_lines(view.fronts(), view.ranking) if view.ranking.objectives
              else summary.lines(view.best(), view.ranking))
    out += ["  " + line for line in answer]
    return out


__all__ = ["TrialView", "SearchView", "trial_state", "budget_of", "numeric", "render", "header", "duration"]
