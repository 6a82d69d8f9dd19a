"""Say when a ladder family is bunched: its fine-tuned points sit near their start point's rate.

A fine-tune too short or too gentle for the distance between its λ and its start point's leaves the
model near the start point's rate (issue 34: λ 0.0035 fine-tuned from λ 0.0483 stayed at 1.20 bpp
where from scratch reaches 0.24 bpp, near the start point's 2.68). Its R-D loss may even look good,
but the family's points are then a bunch near one rate, not a curve, and a BD-rate over them
says little. The rule compares the family's rate spread with its λ spread on log scales:
``log(max bpp / min bpp) / log(max λ / min λ)``. Families that learned rate control come out
near 0.9 (the issue's from-scratch pair: 11× in bpp over 13.8× in λ); a ladder family below
:data:`BUNCHED_EXPONENT` is called bunched. Only families with fine-tuned points are judged:
a from-scratch family is what its model does at that budget, not a ladder's artefact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from search.analysis.families import Family
from search.tracking import names as T

#: A ladder family whose bpp spread is below (λ spread) ** this is bunched (see the module docstring).
BUNCHED_EXPONENT = 0.4


@dataclass(frozen=True)
class LadderPoint:
    """One finished rate point of a family: its λ, its final eval bpp, and whether it was fine-tuned."""

    lmbda: float
    bpp: float
    fine_tuned: bool


def bunched_warning(label: str, points: Sequence[LadderPoint]) -> Optional[str]:
    """A one-line warning when ``label``'s ladder family is bunched; None when it spreads, has no fine-tuned
    point, or has fewer than two distinct λ."""
    usable = [p for p in points if p.lmbda > 0 and p.bpp > 0 and math.isfinite(p.bpp)]
    starts = [p for p in usable if not p.fine_tuned]
    if not starts or not any(p.fine_tuned for p in usable):
        return None
    lambdas, rates = [p.lmbda for p in usable], [p.bpp for p in usable]
    lambda_spread, rate_spread = max(lambdas) / min(lambdas), max(rates) / min(rates)
    if lambda_spread <= 1.0 or math.log(rate_spread) >= BUNCHED_EXPONENT * math.log(lambda_spread):
        return None
    start = starts[0]
    farthest = max((p for p in usable if p.fine_tuned), key=lambda p: abs(math.log(p.lmbda / start.lmbda)))
    return (f"ladder family {label} is bunched: its rates span {rate_spread:.2f}× over a {lambda_spread:.1f}× λ "
            f"range (start point λ {start.lmbda:g} at {start.bpp:.3f} bpp, fine-tuned λ {farthest.lmbda:g} at "
            f"{farthest.bpp:.3f} bpp): its points sit near the start point's rate, not on an R-D curve; fine-tune "
            "longer (ladder.fine_tune) or until the rate settles (ladder.settle)")


def family_warnings(families: Sequence[Family], labels: Mapping[str, str],
                    roles: Mapping[str, Optional[str]]) -> dict[str, str]:
    """Per family key, the warning of each bunched ladder family; ``roles``: trial id -> its
    ``lic_search.ladder`` tag (``start`` / ``fine_tune``; None outside a ladder)."""
    found = {}
    for family in families:
        points = [LadderPoint(t.lmbda, float(t.bpp), roles.get(t.trial_id) == T.LADDER_FINE_TUNE)
                  for t in family.trials if t.has_point and t.lmbda is not None]
        warning = bunched_warning(labels.get(family.key, family.key), points)
        if warning:
            found[family.key] = warning
    return found


__all__ = ["BUNCHED_EXPONENT", "LadderPoint", "bunched_warning", "family_warnings"]
