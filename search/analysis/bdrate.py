"""Bjøntegaard-delta rate (BD-rate) of one R-D curve against an anchor.

BD-rate is the average bitrate difference at equal quality over the quality range both
curves cover (Bjøntegaard, VCEG-M33, 2001); it is how the AuxT paper (Table 1) and the
LIC literature rank codecs, with VTM on Kodak as the usual anchor. The interpolation and
integration are the `bjontegaard` package's (pchip by default, as in its reference tables;
akima and the original cubic fit are there too). MS-SSIM is compared in dB,
``-10·log10(1 − MS-SSIM)``, as in CompressAI's plots and the paper's figures.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from search.analysis.curves import CurveError, RDCurve

METHODS = ("pchip", "akima", "cubic")
METRICS = ("psnr", "ms-ssim")
MIN_POINTS = 4  # the original cubic fit needs 4; kept for every method so results stay comparable
LOW_OVERLAP = 0.75  # below this the bjontegaard package warns; we report the overlap instead
#: The rule of every BD-rate lic-search ranks by (report, best --by family): the quality ranges must share at
#: least this share of the SHORTER range. Less, and the integral runs over a sliver where one curve is
#: extrapolated or nearly flat (a 0.04 dB overlap gave "+18.96 %"): such a number is noise, shown as n/a.
MIN_SHORTER_OVERLAP = 0.5


@dataclass(frozen=True)
class BDResult:
    """BD-rate of ``test`` against ``anchor``: negative = fewer bits at equal quality."""

    test: str
    anchor: str
    metric: str
    method: str
    bd_rate: float  # percent
    bd_quality: Optional[float]  # dB (BD-PSNR, or BD-MS-SSIM in dB); None when the rate ranges do not overlap
    overlap: float  # share of the union of both quality ranges that both curves cover, in [0, 1]
    test_points: int
    anchor_points: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_db(values: Sequence[float], metric: str) -> np.ndarray:
    """Quality on the axis BD-rate integrates over: PSNR as is, MS-SSIM as −10·log10(1 − MS-SSIM)."""
    array = np.asarray(values, dtype=float)
    if metric == "psnr":
        return array
    if metric == "ms-ssim":
        return -10.0 * np.log10(1.0 - array)
    raise CurveError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def _points(curve: RDCurve, metric: str, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    quality = quality_db(curve.values(metric), metric)
    rate = np.asarray(curve.bpp, dtype=float)
    if len(rate) < min_points:
        raise CurveError(f"{curve.source}: curve {curve.name!r} has {len(rate)} rate points; BD-rate needs at "
                         f"least {min_points}")
    order = np.argsort(quality)
    quality, rate = quality[order], rate[order]
    repeated = np.flatnonzero(np.diff(quality) == 0)
    if repeated.size:
        raise CurveError(f"{curve.source}: curve {curve.name!r} has two points with the same {metric} "
                         f"({quality[repeated[0]]:.4f} dB); BD-rate needs distinct quality values")
    return rate, quality


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    inner = min(a.max(), b.max()) - max(a.min(), b.min())
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(inner, 0.0) / union if union > 0 else 0.0


def _shorter_overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(shared quality range in dB, its share of the shorter of the two ranges)."""
    inner = max(min(a.max(), b.max()) - max(a.min(), b.min()), 0.0)
    shorter = min(a.max() - a.min(), b.max() - b.min())
    return inner, (inner / shorter if shorter > 0 else 0.0)


def _bjontegaard_rate(rate_a: np.ndarray, quality_a: np.ndarray, rate_t: np.ndarray, quality_t: np.ndarray,
                      method: str) -> float:
    import bjontegaard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low overlap is reported by the callers instead
        return float(bjontegaard.bd_rate(rate_a, quality_a, rate_t, quality_t, method,
                                         require_matching_points=False, min_overlap=0.0))


def bd_rate_points(rate_a: Sequence[float], quality_a: Sequence[float], rate_t: Sequence[float],
                   quality_t: Sequence[float], method: str = "pchip", min_points: int = MIN_POINTS,
                   min_shorter_overlap: float = 0.0) -> float:
    """BD-rate (percent) of test points against anchor points, quality already on the dB axis
    (:func:`quality_db`): :func:`bd_rate` for bare arrays (the bootstrap's resampled curves).
    Raises :class:`CurveError` (a short reason) where :func:`bd_rate` would refuse."""
    curves = []
    for rate, quality in ((rate_a, quality_a), (rate_t, quality_t)):
        rate, quality = np.asarray(rate, dtype=float), np.asarray(quality, dtype=float)
        if len(rate) < min_points:
            raise CurveError(f"{len(rate)} rate points; BD-rate needs at least {min_points}")
        order = np.argsort(quality)
        if np.any(np.diff(quality[order]) == 0) or not np.all(np.isfinite(quality)) or np.any(rate <= 0):
            raise CurveError("two points with the same quality, or a non-finite value")
        curves.append((rate[order], quality[order]))
    (rate_a, quality_a), (rate_t, quality_t) = curves
    shared, share = _shorter_overlap(quality_t, quality_a)
    if shared <= 0 or share < min_shorter_overlap:
        raise CurveError(f"the quality ranges overlap {shared:.2f} dB, {share:.0%} of the shorter range; a BD-rate "
                         f"needs {max(min_shorter_overlap, 1e-9):.0%}")
    value = _bjontegaard_rate(rate_a, quality_a, rate_t, quality_t, method)
    if not math.isfinite(value):
        raise CurveError(f"BD-rate is not finite ({value})")
    return value


def bd_rate(test: RDCurve, anchor: RDCurve, metric: str = "psnr", method: str = "pchip",
            min_points: int = MIN_POINTS, min_shorter_overlap: float = 0.0) -> BDResult:
    """BD-rate (percent) and BD-quality (dB) of ``test`` against ``anchor``.

    ``min_shorter_overlap``: refuse (:class:`CurveError`, saying by how much) unless the quality
    ranges share at least this share of the shorter one (:data:`MIN_SHORTER_OVERLAP` for rankings)."""
    import bjontegaard

    if method not in METHODS:
        raise CurveError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if metric not in METRICS:
        raise CurveError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    rate_t, quality_t = _points(test, metric, min_points)
    rate_a, quality_a = _points(anchor, metric, min_points)
    overlap = _overlap(quality_t, quality_a)
    if overlap == 0.0:
        raise CurveError(
            f"{test.source} and {anchor.source}: the {metric} ranges do not overlap "
            f"({test.name}: {quality_t.min():.2f}-{quality_t.max():.2f} dB, "
            f"{anchor.name}: {quality_a.min():.2f}-{quality_a.max():.2f} dB); BD-rate is undefined")
    shared, share = _shorter_overlap(quality_t, quality_a)
    if share < min_shorter_overlap:
        raise CurveError(
            f"{test.source} and {anchor.source}: the {metric} ranges overlap {shared:.2f} dB, {share:.0%} of the "
            f"shorter range ({test.name}: {quality_t.min():.2f}-{quality_t.max():.2f} dB, {anchor.name}: "
            f"{quality_a.min():.2f}-{quality_a.max():.2f} dB); a BD-rate needs {min_shorter_overlap:.0%}")
    value = _bjontegaard_rate(rate_a, quality_a, rate_t, quality_t, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low overlap is reported in the result instead
        quality_delta: Optional[float] = None
        by_rate_t, by_rate_a = np.argsort(rate_t), np.argsort(rate_a)
        rates_distinct = np.all(np.diff(rate_t[by_rate_t]) > 0) and np.all(np.diff(rate_a[by_rate_a]) > 0)
        if rates_distinct and _overlap(np.log10(rate_t), np.log10(rate_a)) > 0:
            quality_delta = float(bjontegaard.bd_psnr(rate_a[by_rate_a], quality_a[by_rate_a],
                                                      rate_t[by_rate_t], quality_t[by_rate_t], method,
                                                      require_matching_points=False, min_overlap=0.0))
    if not math.isfinite(value):
        raise CurveError(f"{test.source} against {anchor.source}: BD-rate is not finite ({value}); "
                         "check that both curves are increasing R-D curves")
    return BDResult(test=test.name, anchor=anchor.name, metric=metric, method=method, bd_rate=float(value),
                    bd_quality=quality_delta, overlap=overlap, test_points=len(rate_t), anchor_points=len(rate_a))


__all__ = ["BDResult", "bd_rate", "bd_rate_points", "quality_db", "METHODS", "METRICS", "MIN_POINTS", "LOW_OVERLAP",
           "MIN_SHORTER_OVERLAP"]
