"""Answers with their uncertainty: bootstrap intervals on rate savings and on rankings, ties said as ties.

BD-rate intervals of rate families (the bootstrap itself, leader gaps and the letter display are
:mod:`search.bootstrap`). An ablation's differences are small (the AuxT paper separates its variants by
0.5-1.5 % BD-rate), so a bare point estimate cannot say whether 24 images and one seed tell two variants
apart. Every evaluation records each image's values (:class:`trainables.metrics.PerImage`); this module
resamples them.

Method, stated once wherever the numbers are printed (:func:`Bootstrap.describe`):

* **Paired bootstrap over images.** One resample draws image indices with replacement; *every* curve of that
  resample (each variant's and the baseline's, every λ) is measured on the same drawn images, so the shared
  image difficulty cancels out of the difference, as it does in the point estimate.
* **Seeds.** Families that differ only in ``schedule.seed`` are one variant (:func:`fold_seeds`); a resample
  also draws that variant's seeds with replacement (independently per variant), so the interval covers
  training noise as well. With one seed it covers the image sample only, which the output says.
* **Percentile intervals** at 95 % from :data:`RESAMPLES` resamples with the fixed seed :data:`SEED`:
  the same search gives the same intervals. The BD-rate of every resample is the ``bjontegaard`` package's
  (:func:`search.analysis.bdrate.bd_rate_points`); resamples where it is undefined are dropped and counted.
* **Ties.** Two results are tied when the interval of their difference contains 0. Variants are grouped by a
  compact letter display (variants sharing a letter cannot be told apart); the *resolution* of a search is the
  median half-width of those difference intervals: differences under it are not resolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from search.analysis.bdrate import bd_rate_points, quality_db
from search.analysis.curves import CurveError
from search.bootstrap import MIN_IMAGES, Bootstrap, Interval, Measured, matrix, letter_display, shared_images
from search.space.strata import SEED_KEY, family_key, flat_params
from trainables.metrics import PerImage

if TYPE_CHECKING:
    from search.analysis.families import Family

@dataclass
class Variant:
    """Seed repeats of one recipe: per seed, its trials (one per λ)."""

    label: str
    key: str  # family key without the seed
    seeds: dict[str, list[Measured]] = field(default_factory=dict)  # seed -> trials

    @property
    def seed_count(self) -> int:
        return len(self.seeds)


def seedless_key(params: Mapping[str, object]) -> str:
    """The family key of a trial with its seed left out: seed repeats of one recipe share it."""
    flat = {k: v for k, v in flat_params(params).items() if k != SEED_KEY}
    return family_key(flat)


def fold_seeds(members: Iterable[tuple[str, Mapping[str, object], Optional[str], Measured]]) -> list[Variant]:
    """Group ``(label, params, family key or None, trial)`` into variants, seeds folded, in first-seen order.

    ``family key`` (a ladder's fine-tunes carry their start point's) wins over the params where given."""
    variants: dict[str, Variant] = {}
    for label, params, family, measured in members:
        key = seedless_key(params) if family is None else family
        seed = str(flat_params(params).get(SEED_KEY, "0"))
        variant = variants.setdefault(key, Variant(label, key))
        variant.seeds.setdefault(seed, []).append(measured)
    return list(variants.values())


# ---------------------------------------------------------------------------------- BD-rates
@dataclass
class BDIntervals:
    """BD-rate of every variant against the baseline, with intervals, and the grouping they allow."""

    baseline: str
    metric: str
    method: str
    images: int
    bootstrap: Bootstrap
    seeds: dict[str, int]  # label -> seed repeats folded into it
    intervals: dict[str, Interval]  # label -> BD-rate (%) against the baseline
    reasons: dict[str, str]  # label -> why it has no interval
    differences: dict[tuple[str, str], Interval] = field(default_factory=dict)  # (a, b) -> BD(a) - BD(b)
    letters: dict[str, str] = field(default_factory=dict)  # label -> compact letter display group(s)

    @property
    def resolution(self) -> Optional[float]:
        """Median half-width of the difference intervals (BD-rate points): smaller differences are not resolved."""
        widths = [i.half_width for i in self.differences.values()]
        return float(np.median(widths)) if widths else None

    def tied_with(self, label: str) -> list[str]:
        """The other variants (baseline included) whose difference to ``label`` has an interval containing 0."""
        return [b if a == label else a for (a, b), i in self.differences.items() if label in (a, b) and i.contains(0)]

    def resolution_sentence(self) -> Optional[str]:
        if self.resolution is None:
            return None
        seeds = sorted(set(self.seeds.values()))
        seed_text = f"{seeds[0]} seed" + ("s" if seeds[0] != 1 else "") if len(seeds) == 1 else \
            f"{seeds[0]}-{seeds[-1]} seeds"
        return (f"with {self.images} images and {seed_text} per variant, differences under "
                f"{self.resolution:.1f} % BD-rate are not resolved")

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "metric": self.metric, "method": self.method, "images": self.images,
                "bootstrap": self.bootstrap.to_dict(), "seeds": self.seeds,
                "resolution": self.resolution, "resolution_text": self.resolution_sentence(),
                "variants": {label: {**i.to_dict(), "dropped": i.dropped, "group": self.letters.get(label, ""),
                                     "tied_with": self.tied_with(label), "seeds": self.seeds.get(label)}
                             for label, i in self.intervals.items()},
                "differences": [{"a": a, "b": b, **i.to_dict(), "tied": i.contains(0)}  # BD(a) - BD(b), any pair
                                for (a, b), i in self.differences.items()],
                "reasons": self.reasons}


def _curve_means(variant: Variant, names: Sequence[str], indices: np.ndarray, rng: np.random.Generator,
                 quality: str, resamples: int) -> tuple[list[float], np.ndarray, np.ndarray]:
    """λs, and per resample (rows) and λ (columns) the mean rate and quality over resampled images and seeds.

    A λ counts when every seed trained it. Row 0 of the returned arrays is the full sample (no resampling)."""
    seeds = list(variant.seeds.values())
    by_lambda = [{m.lmbda: m for m in trials} for trials in seeds]
    lambdas = sorted(set.intersection(*(set(b) - {None} for b in by_lambda)))
    column = "ms_ssim" if quality == "ms-ssim" else "psnr"
    rates = np.empty((resamples + 1, len(lambdas)))
    qualities = np.empty((resamples + 1, len(lambdas)))
    drawn = rng.integers(0, len(seeds), size=(resamples, len(seeds)))  # seeds of each resample
    for j, lmbda in enumerate(lambdas):
        per_seed_rate = np.stack([matrix(b[lmbda].table, names, "bpp") for b in by_lambda])  # seeds x images
        per_seed_quality = np.stack([matrix(b[lmbda].table, names, column) for b in by_lambda])
        rate_means = per_seed_rate[:, indices].mean(axis=2)  # seeds x resamples
        quality_means = per_seed_quality[:, indices].mean(axis=2)
        picks = np.arange(resamples)
        rates[1:, j] = np.mean([rate_means[drawn[:, s], picks] for s in range(len(seeds))], axis=0)
        qualities[1:, j] = np.mean([quality_means[drawn[:, s], picks] for s in range(len(seeds))], axis=0)
        rates[0, j] = per_seed_rate.mean()
        qualities[0, j] = per_seed_quality.mean()
    return lambdas, rates, quality_db(qualities, quality)


def bd_rate_intervals(variants: Sequence[Variant], baseline: Variant, metric: str = "psnr", method: str = "pchip",
                      bootstrap: Bootstrap = Bootstrap(), min_points: int = 4,
                      min_shorter_overlap: float = 0.5) -> Optional[BDIntervals]:
    """BD-rate of each variant against ``baseline`` with a paired-bootstrap interval; None without shared images.

    The point estimate is the BD-rate of the mean curves (seeds averaged); it is refused under the same
    rules as every ranked BD-rate (points, overlap), then the variant has a reason instead of an interval."""
    column = "ms_ssim" if metric == "ms-ssim" else "psnr"
    everyone = [baseline] + [v for v in variants if v.key != baseline.key]
    names = shared_images((m.table for v in everyone for trials in v.seeds.values() for m in trials), column)
    if len(names) < MIN_IMAGES or not set(names) <= set(shared_images(
            (m.table for v in everyone for t in v.seeds.values() for m in t), "bpp")):
        return None
    rng = bootstrap.rng()
    indices = rng.integers(0, len(names), size=(bootstrap.resamples, len(names)))  # shared by every curve
    curves = {v.label: _curve_means(v, names, indices, rng, metric, bootstrap.resamples) for v in everyone}
    result = BDIntervals(baseline.label, metric, method, len(names), bootstrap,
                         {v.label: v.seed_count for v in everyone}, {}, {})
    samples: dict[str, np.ndarray] = {baseline.label: np.zeros(bootstrap.resamples)}
    result.intervals[baseline.label] = Interval(0.0, 0.0, 0.0)
    _, baseline_rates, baseline_quality = curves[baseline.label]
    for variant in everyone[1:]:
        _, rates, quality = curves[variant.label]
        try:
            estimate = bd_rate_points(baseline_rates[0], baseline_quality[0], rates[0], quality[0], method,
                                      min_points, min_shorter_overlap)
        except CurveError as error:
            result.reasons[variant.label] = str(error)
            continue
        values = np.array([_bd_or_nan(baseline_rates[b], baseline_quality[b], rates[b], quality[b], method)
                           for b in range(1, bootstrap.resamples + 1)])
        kept = values[np.isfinite(values)]
        if kept.size < bootstrap.resamples / 2:
            result.reasons[variant.label] = "the BD-rate is undefined in most resamples (curves barely overlap)"
            continue
        samples[variant.label] = values
        result.intervals[variant.label] = Interval(estimate, *bootstrap.bounds(kept),
                                                   dropped=bootstrap.resamples - kept.size)
    labels = list(result.intervals)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            difference = samples[a] - samples[b]
            kept = difference[np.isfinite(difference)]
            estimate = result.intervals[a].estimate - result.intervals[b].estimate
            result.differences[(a, b)] = Interval(estimate, *bootstrap.bounds(kept),
                                                  dropped=bootstrap.resamples - kept.size)
    result.letters = letter_display({label: i.estimate for label, i in result.intervals.items()},
                                    lambda a, b: result.differences.get((a, b), result.differences.get((b, a)))
                                    .contains(0))
    return result


def _bd_or_nan(rate_a: np.ndarray, quality_a: np.ndarray, rate_t: np.ndarray, quality_t: np.ndarray,
               method: str) -> float:
    try:
        return bd_rate_points(rate_a, quality_a, rate_t, quality_t, method, min_points=2, min_shorter_overlap=0.0)
    except CurveError:
        return math.nan


def family_intervals(families: Sequence["Family"], baseline: "Family", labels: Mapping[str, str],
                     tables: Mapping[str, Optional[PerImage]], metric: str = "psnr", method: str = "pchip",
                     bootstrap: Bootstrap = Bootstrap()) -> tuple[Optional[BDIntervals], dict[str, str]]:
    """:func:`bd_rate_intervals` of a search's rate families (``search.analysis.families``) against its baseline
    family, seed repeats folded; ``tables``: trial id -> its final per-image results.

    Returns the intervals (None when no trial has per-image results) and, per family key, the label of the
    variant it was folded into (its own label without the ``#2`` that tells seed repeats apart)."""
    members, folded_label = [], {}
    for family in families:
        label = family.variant or labels[family.key].split(" #")[0]
        key = seedless_key(family.params)
        for trial in family.trials:
            table = tables.get(trial.trial_id)
            if table is not None and trial.has_point:
                members.append((label, trial.params, key, Measured(trial.trial_id, trial.lmbda, table)))
        folded_label[family.key] = label
    variants = fold_seeds(members)
    baseline_variant = next((v for v in variants if v.key == seedless_key(baseline.params)), None)
    if baseline_variant is None:
        return None, folded_label
    result = bd_rate_intervals([v for v in variants if v is not baseline_variant], baseline_variant, metric, method,
                               bootstrap)
    if result is not None:
        for label in set(folded_label.values()) - set(result.intervals) - set(result.reasons):
            result.reasons[label] = "no per-image results (recorded before lic-search kept them)"
    return result, folded_label


__all__ = ["Variant", "BDIntervals", "fold_seeds", "seedless_key", "bd_rate_intervals", "family_intervals"]
