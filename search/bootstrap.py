"""Bootstrap intervals over images, and ties said as ties: the statistics every layer prints.

Every evaluation records each image's values (:class:`trainables.metrics.PerImage`), so a comparison of two
trials can be *paired over images*: one resample draws image indices with replacement and measures both on
the same drawn images, so what the images share cancels out of the difference. Percentile intervals at 95 %
from :data:`RESAMPLES` resamples with the fixed seed :data:`SEED`: the same search gives the same intervals.
Two results are tied when the interval of their difference contains 0.

Here: the method (:class:`Bootstrap`), intervals, the leader-vs-runner-up gaps of a rate point
(:func:`leader_gaps`, :func:`mark_ties`) and the compact letter display (:func:`letter_display`). BD-rate
intervals of rate families are :mod:`search.analysis.intervals`. A top-level module without imports from
``search``: the reports (analysis) and the console, status and summary (monitor) print the same ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from trainables import metrics as M
from trainables.metrics import PerImage

RESAMPLES = 1000
SEED = 20261207
LEVEL = 0.95
MIN_IMAGES = 2  # fewer shared images: no interval (a resample of one image is the image itself)
#: Per-image column that measures each trial metric a search may rank by (others have no interval).
COLUMN_OF = {M.EVAL_RD_LOSS: "rd_loss", M.EVAL_BPP: "bpp", M.EVAL_PSNR: "psnr", M.EVAL_MSE: "mse",
             M.EVAL_MS_SSIM: "ms_ssim"}


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed; one instance per printed result, described once."""

    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def describe(self) -> str:
        return (f"{self.level:.0%} percentile intervals, paired bootstrap over images (and seeds where a variant "
                f"has several), {self.resamples} resamples, seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": "paired bootstrap over images (and seeds), percentile", "resamples": self.resamples,
                "seed": self.seed, "level": self.level}

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def bounds(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2 * 100
        lower, upper = np.percentile(values, [tail, 100 - tail])
        return float(lower), float(upper)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval; ``dropped`` resamples had no value (e.g. a BD-rate undefined there)."""

    estimate: float
    lower: float
    upper: float
    dropped: int = 0

    def contains(self, value: float = 0.0) -> bool:
        return self.lower <= value <= self.upper

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2

    def text(self, unit: str = " %", digits: int = 1) -> str:
        """``-1.2 % [-2.0, -0.4]``."""
        return f"{self.estimate:+.{digits}f}{unit} [{self.lower:+.{digits}f}, {self.upper:+.{digits}f}]"

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "lower": self.lower, "upper": self.upper}


def interval_text(interval: Optional[Mapping[str, float]], unit: str = " %", digits: int = 1) -> str:
    """An interval as JSON rows hold it (:meth:`Interval.to_dict`), as text; ``n/a`` for None."""
    if not interval:
        return "n/a"
    return Interval(interval["estimate"], interval["lower"], interval["upper"]).text(unit, digits)


@dataclass
class Measured:
    """One trial's final evaluation, image by image."""

    trial_id: str
    lmbda: Optional[float]
    table: PerImage


def shared_images(tables: Iterable[PerImage], column: str) -> list[str]:
    """Image names every table has a finite ``column`` value for, sorted (the images to pair over)."""
    common: Optional[set[str]] = None
    for table in tables:
        names = {n for n, v in table.values(column).items() if v is not None and math.isfinite(v)}
        common = names if common is None else common & names
    return sorted(common or ())


def matrix(table: PerImage, names: Sequence[str], column: str) -> np.ndarray:
    values = table.values(column)
    return np.array([values[n] for n in names], dtype=float)


# ---------------------------------------------------------------------------- letter display
def letter_display(estimates: Mapping[str, float], tied) -> dict[str, str]:
    """Compact letter display: labels sorted by estimate (lowest = best first) get letters so that two labels
    share a letter exactly when a run of consecutive labels containing both is pairwise ``tied(a, b)``.

    Each maximal such run gets the next letter ("a" for the best); a label in no shared run has its own."""
    order = sorted(estimates, key=lambda label: estimates[label])
    letters: dict[str, str] = {label: "" for label in order}
    runs: list[tuple[int, int]] = []
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and all(tied(order[k], order[end + 1]) for k in range(start, end + 1)):
            end += 1
        if not runs or end > runs[-1][1]:
            runs.append((start, end))
    for number, (start, end) in enumerate(runs):
        letter = _letter(number)
        for label in order[start:end + 1]:
            letters[label] += letter
    return letters


def _letter(number: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[number] if number < 26 else f"[{number + 1}]"


# ------------------------------------------------------------------------------ rate points
@dataclass
class Gap:
    """A trial's difference to its rate point's leader (``other - leader``, in the metric's unit and in %)."""

    trial_id: str
    interval: Interval
    relative: Interval  # percent of the leader's value
    tied: bool

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, **self.interval.to_dict(),
                "relative": self.relative.to_dict(), "tied": self.tied}


def leader_gaps(leader: Measured, others: Sequence[Measured], metric: str, mode: str,
                bootstrap: Bootstrap = Bootstrap()) -> list[Gap]:
    """Each other trial's difference to the leader in ``metric`` (per-image, paired over the shared images),
    with its interval; tied when that interval contains 0. Trials without per-image values are left out."""
    column = COLUMN_OF.get(metric)
    if column is None:
        return []
    gaps: list[Gap] = []
    rng = bootstrap.rng()
    for other in others:
        names = shared_images((leader.table, other.table), column)
        if len(names) < MIN_IMAGES:
            continue
        lead, value = matrix(leader.table, names, column), matrix(other.table, names, column)
        difference = value - lead
        indices = rng.integers(0, len(names), size=(bootstrap.resamples, len(names)))
        means = difference[indices].mean(axis=1)
        base = abs(float(lead.mean())) or 1.0
        interval = Interval(float(difference.mean()), *bootstrap.bounds(means))
        relative = Interval(100 * interval.estimate / base, 100 * interval.lower / base, 100 * interval.upper / base)
        gaps.append(Gap(other.trial_id, interval, relative, interval.contains(0)))
    return gaps


def mark_ties(rows: Sequence[dict[str, Any]], tables: Mapping[str, Optional[PerImage]], metric: str, mode: str,
              key: Callable[[dict[str, Any]], str] = lambda row: repr(row["stratum"]),
              bootstrap: Bootstrap = Bootstrap()) -> None:
    """Ranked rows (``trial_id``, ``rank``; grouped by ``key``, the rate point) gain ``vs_best``: their difference
    to their rate point's rank-1 row with its interval (:meth:`Gap.to_dict`), and the rank-1 row gains
    ``tied_with``: the trial ids whose difference's interval contains 0. ``tables``: trial id -> per-image results."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("rank") is not None:
            groups.setdefault(key(row), []).append(row)
    for members in groups.values():
        leader = next((r for r in members if r["rank"] == 1), None)
        if leader is None or tables.get(leader["trial_id"]) is None:
            continue
        others = [r for r in members if r is not leader and tables.get(r["trial_id"]) is not None]
        gaps = leader_gaps(Measured(leader["trial_id"], None, tables[leader["trial_id"]]),
                           [Measured(r["trial_id"], None, tables[r["trial_id"]]) for r in others], metric, mode,
                           bootstrap)
        by_id = {r["trial_id"]: r for r in others}
        for gap in gaps:
            by_id[gap.trial_id]["vs_best"] = gap.to_dict()
        leader["tied_with"] = [gap.trial_id for gap in gaps if gap.tied]


def table_of(result: Mapping[str, Any]) -> Optional[PerImage]:
    """The per-image table a Ray result (or its result.json line) carries, if any."""
    text = result.get(M.EVAL_IMAGES) if result else None
    return PerImage.from_json(text) if isinstance(text, str) and text else None




__all__ = ["Bootstrap", "Interval", "Measured", "Gap", "shared_images", "leader_gaps", "mark_ties", "letter_display",
           "table_of",
           "interval_text", "RESAMPLES", "SEED", "LEVEL", "COLUMN_OF", "MIN_IMAGES"]
