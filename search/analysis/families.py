"""Rate families and the training-speed metric.

A *rate family* is one training recipe trained at several R-D trade-offs λ: the paper
(Section 5.1) trains every model at six λ and compares models by the BD-rate of the
resulting curve, not trial by trial. Trials whose configs differ only in ``loss.lmbda``
therefore share a family key, and a family's points form one R-D curve.

Choices, documented because they change rankings:

* The seed (``schedule.seed``) stays in the key. Replicates with another seed form another
  family, so seed variance shows as a spread of BD-rates instead of as two points at one λ
  in a single, zig-zagging curve.
* When AuxT is off, its other knobs (``model.auxt.*``) are dropped from the key: they
  change nothing in training, and keeping them would split identical runs.
* Values are compared as ``str(value)``, which is how MLflow stores params, so a key
  computed from a trial's config dict equals the key computed from its MLflow params.

The training-speed metric turns the paper's claim that AuxT "reaches the same performance
with about half the training iterations" into one number: how many iterations a trial
needs to reach another trial's final eval R-D loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence, Union

from search.analysis.bdrate import MIN_POINTS, MIN_SHORTER_OVERLAP, BDResult, bd_rate
from search.analysis.curves import RATE_LIKELIHOOD, CurveError, ImageSet, RDCurve, eval_image_set
from search.space.variants import SEPARATOR as VARIANT_SEPARATOR
from search.tracking import run_names
from search.space.strata import (
    LAMBDA_KEY,
    SEED_KEY,
    auxt_enabled,
    family_key,
    family_params,
    flat_params,
)

History = Union[Mapping[int, float], Sequence[tuple[int, float]]]


# ----------------------------------------------------------------------------------- families
@dataclass
class TrialPoint:
    """One trial as families need it: its params and final eval metrics (None = not reported)."""

    trial_id: str
    params: dict[str, object]
    bpp: Optional[float] = None
    psnr: Optional[float] = None
    ms_ssim: Optional[float] = None
    rd_loss_history: list[tuple[int, float]] = field(default_factory=list)  # (iteration, eval/rd_loss)
    family: Optional[str] = None  # recorded family key (a ladder's fine-tunes: their start point's), else from params
    variant: Optional[str] = None  # its variant label (``label:`` in the space; the lic_search.variant tag)

    @property
    def lmbda(self) -> Optional[float]:
        value = flat_params(self.params).get(LAMBDA_KEY)
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    @property
    def has_point(self) -> bool:
        return all(v is not None and math.isfinite(v) for v in (self.bpp, self.psnr))


@dataclass
class Family:
    """Trials of one recipe at several λ."""

    key: str
    params: dict[str, str]
    trials: list[TrialPoint]

    @property
    def auxt(self) -> bool:
        return auxt_enabled(self.params)

    @property
    def variant(self) -> Optional[str]:
        """The variant label its trials carry (None in an unlabelled space)."""
        return next((t.variant for t in self.trials if t.variant), None)

    @property
    def lambdas(self) -> list[Optional[float]]:
        return [t.lmbda for t in self.trials]

    def image_set(self) -> Optional[ImageSet]:
        """The images its trials evaluated on (``data.eval``, first ``data.max_eval_images``) when they share
        one folder that is readable here; None otherwise (the curve then says it does not know)."""
        sets = {(str(flat_params(t.params).get("data.eval")), str(flat_params(t.params).get("data.max_eval_images")))
                for t in self.trials}
        if len(sets) != 1:
            return None
        folder, limit = sets.pop()
        return eval_image_set(folder, None if limit in ("None", "null") else int(float(limit)))

    def curve(self, name: Optional[str] = None) -> RDCurve:
        """The family's R-D curve from its trials' final eval points, sorted by rate."""
        points = sorted((t for t in self.trials if t.has_point), key=lambda t: t.bpp)
        with_ms_ssim = bool(points) and all(t.ms_ssim is not None and 0.0 < t.ms_ssim < 1.0 for t in points)
        return RDCurve(
            name=name or f"family {self.key}",
            bpp=[float(t.bpp) for t in points],
            psnr=[float(t.psnr) for t in points],
            ms_ssim=[float(t.ms_ssim) for t in points] if with_ms_ssim else None,
            description=f"lic-search rate family {self.key} (training-time eval metrics)",
            rate=RATE_LIKELIHOOD,  # eval/bpp: −log2 likelihoods on the trial's eval images, not a bitstream
            extra={"lmbda": [t.lmbda for t in points], "trial_id": [t.trial_id for t in points]},
            source=f"family {self.key}",
            image_set=self.image_set(),
        )

    def is_curve(self, curve: RDCurve) -> bool:
        """Whether ``curve`` is this family's own (a saved ``curves/<family>.json`` given as reference)."""
        ids = curve.extra.get("trial_id")
        if ids:
            return sorted(map(str, ids)) == sorted(t.trial_id for t in self.trials if t.has_point)
        own = self.curve()
        return own.bpp == curve.bpp and own.psnr == curve.psnr


def group_families(trials: Iterable[TrialPoint]) -> list[Family]:
    """Group trials into families, in order of first appearance; trials inside sorted by λ."""
    families: dict[str, Family] = {}
    for trial in trials:
        key = trial.family or family_key(trial.params)
        if key not in families:
            families[key] = Family(key, family_params(trial.params), [])
        if key == family_key(trial.params):  # the recipe as its own trials (a ladder's start point) have it
            families[key].params = family_params(trial.params)
        families[key].trials.append(trial)
    for family in families.values():
        family.trials.sort(key=lambda t: (t.lmbda is None, t.lmbda or 0.0, t.trial_id))
    return list(families.values())


def distinguishing_params(families: Sequence[Family]) -> dict[str, dict[str, str]]:
    """Per family key, the params whose shown values differ between the families (how to tell them
    apart): a key a family leaves out shows its default, a knob that does nothing in its model ``n/a``."""
    keys = sorted({k for f in families for k in f.params})
    shown = {f.key: {k: run_names.value(f.params, k) for k in keys} for f in families}
    varying = [k for k in keys if len({shown[f.key][k] for f in families}) > 1]
    return {f.key: {k: shown[f.key][k] for k in varying} for f in families}


def other_images(curve: RDCurve, anchor: RDCurve) -> Optional[str]:
    """Why ``curve`` cannot be compared with a published ``anchor``: both say which images they were measured
    on and the sets differ (training-time evaluation on crops against VTM on Kodak); None when they may."""
    if curve.image_set is None or anchor.image_set is None or curve.image_set.same_images_as(anchor.image_set):
        return None
    return (f"not comparable to {anchor.name}: evaluated on {curve.image_set.describe()}, "
            f"{anchor.name} on {anchor.image_set.describe()}")


def baseline_family(families: Sequence[Family], label: Optional[str]) -> tuple[Optional[Family], str]:
    """The baseline family rate savings are measured against, and how it was chosen (or why there is none).

    ``label``: the space's ``search.baseline.label`` (a variant's label, or one part of a composed
    label); without it the one family with AuxT off, as in the AuxT paper's Figure 8."""
    if label:
        found = [f for f in families if f.variant and label in f.variant.split(VARIANT_SEPARATOR)]
        if len(found) == 1:
            return found[0], f"search.baseline: {label}"
        return None, (f"search.baseline {label!r} names {len(found)} families" if found
                      else f"no finished family carries the baseline label {label!r}")
    off = [f for f in families if not f.auxt]
    if len(off) == 1:
        return off[0], "the family with AuxT off"
    return None, (f"{len(off)} families have AuxT off; mark the baseline with search.baseline: {{label: ...}}" if off
                  else "no family has AuxT off; mark the baseline with search.baseline: {label: ...}")


@dataclass
class FamilyRank:
    """A family's BD-rate against a reference curve; ``result`` is None with a ``reason`` when it has none."""

    family: Family
    result: Optional[BDResult]
    reason: Optional[str] = None
    rank: Optional[int] = None
    is_baseline: bool = False  # the family IS the reference (the baseline): never ranked against itself

    @property
    def bd_rate(self) -> Optional[float]:
        return None if self.result is None else self.result.bd_rate


def rank_families(families: Sequence[Family], reference: RDCurve, metric: str = "psnr", method: str = "pchip",
                  min_points: int = MIN_POINTS, labels: Optional[Mapping[str, str]] = None) -> list[FamilyRank]:
    """Families ranked by BD-rate against ``reference`` (lowest first); those without one come last.

    A BD-rate needs the overlap rule (:data:`MIN_SHORTER_OVERLAP` of the shorter quality range);
    the family whose own curve ``reference`` is (the baseline) comes first, marked, with no rank.
    ``labels`` (family key -> its variant label) name the families in the reasons, never a family hash."""
    ranked: list[FamilyRank] = []
    for family in families:
        if family.is_curve(reference):
            ranked.append(FamilyRank(family, None, "the baseline", is_baseline=True))
            continue
        curve = family.curve((labels or {}).get(family.key))
        curve.source = curve.name
        other = other_images(curve, reference) if reference.rate != RATE_LIKELIHOOD else None
        if other:
            ranked.append(FamilyRank(family, None, other))
            continue
        try:
            ranked.append(FamilyRank(family, bd_rate(curve, reference, metric, method, min_points,
                                                     MIN_SHORTER_OVERLAP)))
        except CurveError as error:
            ranked.append(FamilyRank(family, None, short_reason(str(error), curve, reference)))
    ranked.sort(key=lambda r: (not r.is_baseline, r.result is None, r.bd_rate if r.result is not None else 0.0))
    for position, entry in enumerate(r for r in ranked if r.result is not None):
        entry.rank = position + 1
    return ranked


def short_reason(message: str, curve: RDCurve, reference: RDCurve) -> str:
    """A BD-rate refusal without the curves' sources: "vs <reference>: the psnr ranges do not overlap ..."."""
    pair, own = f"{curve.source} and {reference.source}: ", f"{curve.source}: "
    if message.startswith(pair):
        return f"vs {reference.name}: {message[len(pair):]}"
    return message[len(own):] if message.startswith(own) else message


# ------------------------------------------------------------------------------ training speed
def _points(history: History) -> list[tuple[float, float]]:
    items = history.items() if isinstance(history, Mapping) else history
    points = sorted((float(i), float(v)) for i, v in items if v is not None and math.isfinite(float(v)))
    return points


def iterations_to_reach(history: History, target: float) -> Optional[float]:
    """First iteration at which an eval-loss history reaches ``target`` (loss ≤ target).

    Linear interpolation between consecutive evaluations; if the first evaluation is already
    at or below ``target`` its iteration is returned (nothing earlier was measured); None if
    the history never gets there.
    """
    points = _points(history)
    if not points:
        return None
    if points[0][1] <= target:
        return points[0][0]
    for (i0, v0), (i1, v1) in zip(points, points[1:]):
        if v1 <= target:
            return i0 + (v0 - target) / (v0 - v1) * (i1 - i0)
    return None


@dataclass(frozen=True)
class SpeedResult:
    """How fast ``test`` (e.g. with AuxT) trains compared with ``reference`` (e.g. without)."""

    test_iterations: float  # iteration of test's final evaluation
    test_final_loss: float
    reference_iterations: float
    reference_final_loss: float
    test_reaches_reference_final: Optional[float]  # iterations test needs to reach reference's final loss
    reference_reaches_test_final: Optional[float]  # iterations reference needs to reach test's final loss
    #: test was at or below the reference's final loss at its FIRST evaluation: nothing earlier was measured, so
    #: the share is an upper bound (and the speed-up a lower bound), not an interpolated measurement.
    reached_at_first_eval: bool = False

    @property
    def fraction(self) -> Optional[float]:
        """Share of the reference's iterations test needs for the reference's final loss (0.5 = 2x faster);
        an upper bound when :attr:`reached_at_first_eval`."""
        if self.test_reaches_reference_final is None or self.reference_iterations <= 0:
            return None
        return self.test_reaches_reference_final / self.reference_iterations

    @property
    def speedup(self) -> Optional[float]:
        fraction = self.fraction
        return None if fraction is None or fraction <= 0 else 1.0 / fraction


def training_speed(test: History, reference: History) -> SpeedResult:
    """Iterations each history needs to reach the other's final eval loss, and the ratio."""
    test_points, reference_points = _points(test), _points(reference)
    if not test_points or not reference_points:
        which = "test" if not test_points else "reference"
        raise CurveError(f"training speed needs two eval-loss histories; the {which} history has no finite value")
    (test_end, test_final), (reference_end, reference_final) = test_points[-1], reference_points[-1]
    return SpeedResult(
        test_iterations=test_end,
        test_final_loss=test_final,
        reference_iterations=reference_end,
        reference_final_loss=reference_final,
        test_reaches_reference_final=iterations_to_reach(test_points, reference_final),
        reference_reaches_test_final=iterations_to_reach(reference_points, test_final),
        reached_at_first_eval=test_points[0][1] <= reference_final,
    )


@dataclass
class FamilySpeed:
    """Training speed of two families, matched λ by λ; the summary is the geometric mean."""

    test: Family
    reference: Family
    per_lambda: dict[float, SpeedResult]

    @property
    def fraction(self) -> Optional[float]:
        fractions = [r.fraction for r in self.per_lambda.values() if r.fraction is not None and r.fraction > 0]
        if not fractions or len(fractions) < len(self.per_lambda):
            return None  # some λ never reached the reference's loss: no single honest number
        return math.exp(sum(math.log(f) for f in fractions) / len(fractions))

    @property
    def speedup(self) -> Optional[float]:
        fraction = self.fraction
        return None if fraction is None else 1.0 / fraction

    @property
    def bound(self) -> bool:
        """The summary is a lower bound on the speed-up: some λ reached the loss at its first evaluation."""
        return any(r.reached_at_first_eval for r in self.per_lambda.values())


def family_speed(test: Family, reference: Family) -> FamilySpeed:
    """:func:`training_speed` for every λ both families trained (first trial per λ)."""
    def by_lambda(family: Family) -> dict[float, TrialPoint]:
        found: dict[float, TrialPoint] = {}
        for trial in family.trials:
            if trial.lmbda is not None and _points(trial.rd_loss_history):
                found.setdefault(trial.lmbda, trial)
        return found

    tests, references = by_lambda(test), by_lambda(reference)
    shared = sorted(set(tests) & set(references))
    return FamilySpeed(test, reference, {lmbda: training_speed(tests[lmbda].rd_loss_history,
                                                            references[lmbda].rd_loss_history) for lmbda in shared})


def auxt_pairs(families: Sequence[Family]) -> list[tuple[Family, Family]]:
    """(with AuxT, without AuxT) family pairs whose params differ only in ``model.auxt.*``."""
    pairs = []
    for with_auxt in (f for f in families if f.auxt):
        base = family_key(with_auxt.params, ignore_auxt=True)
        pairs.extend((with_auxt, without) for without in families
                     if not without.auxt and family_key(without.params, ignore_auxt=True) == base)
    return pairs


__all__ = [
    "TrialPoint", "Family", "FamilyRank", "SpeedResult", "FamilySpeed", "baseline_family", "other_images",
    "family_key", "family_params", "auxt_enabled", "group_families", "distinguishing_params", "rank_families",
    "short_reason",
    "iterations_to_reach", "training_speed", "family_speed", "auxt_pairs", "LAMBDA_KEY", "SEED_KEY",
]
