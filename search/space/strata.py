"""Rate points and rate families of trial configs, and the best trial per rate point.

A trial's stratum (its rate point) and its family (trials equal but for λ) are read here and nowhere else.

R-D losses at different λ (or distortions) are not comparable: ``λ·D + R`` has another scale
at every λ, so a flat ranking always puts the lowest λ first. The schedulers compare trials
only within a stratum (their values at ``search.stratify_by``); ``best``, the end-of-search
summary, ``report`` and ``best --export`` rank the same way, so the answer is one best trial
per rate point. Everything here works on plain values (typed params, nested or flat configs),
so it serves MLflow runs and Ray results alike.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar

from search.space.keypath import get_path
from search.space.sections import DEFAULT_STRATIFY_BY, trial_default
from trainables.config import flatten, inactive_auxt_knobs

Row = TypeVar("Row")
Stratum = dict[str, Any]


def parse_param(text: str) -> Any:
    """An MLflow param string back to its value: ``"4"`` -> 4, ``"True"`` -> True, ``"[0.9]"`` -> [0.9].

    MLflow stores ``str(value)``, which for numbers, booleans, None, lists and tuples is the
    Python literal; anything else (a backbone name, a path) stays the string it is.
    """
    if not isinstance(text, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset, bytes, complex)):
        return str(value)
    return value


def typed_params(params: Mapping[str, str]) -> dict[str, Any]:
    """Every MLflow param parsed with :func:`parse_param`."""
    return {key: parse_param(value) for key, value in params.items()}


def stratum_of(config: Mapping[str, Any], keys: Sequence[str] = DEFAULT_STRATIFY_BY) -> Stratum:
    """The values of ``config`` (nested, or flat with dotted keys) at the stratify keys.

    A key the config leaves out takes its :class:`TrialConfig` default, so ``loss.distortion``
    unset and ``mse`` are one stratum (ASHA's and PBT's ``stratum_key`` is built on this).
    """
    stratum: Stratum = {}
    for key in keys:
        value = config[key] if key in config else get_path(dict(config), key)
        stratum[key] = trial_default(key) if value is None else value
    return stratum


def stratum_label(stratum: Mapping[str, Any]) -> str:
    """``λ=0.0035, distortion=mse``-style text (last key component; 'all trials' when unstratified)."""
    if not stratum:
        return "all trials"
    names = {"loss.lmbda": "λ"}
    return ", ".join(f"{names.get(k, k.split('.')[-1])}={_show(v)}" for k, v in stratum.items())


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _order_key(stratum: Mapping[str, Any]) -> tuple:
    """Rate points in a stable, natural order: numbers by value, then everything else as text."""
    return tuple((0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool)
                 else (1, 0.0, json.dumps(v, sort_keys=True, default=str)) for v in stratum.values())


def finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite number, else None (missing, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _groups(rows: Iterable[Row], stratum: Callable[[Row], Stratum]) -> list[tuple[Stratum, list[Row]]]:
    """Rows grouped by stratum, strata in natural order, rows in their given order."""
    groups: dict[str, tuple[Stratum, list[Row]]] = {}
    for row in rows:
        values = stratum(row)
        key = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(key, (values, []))[1].append(row)
    return sorted(groups.values(), key=lambda group: _order_key(group[0]))


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def rank_within_strata(rows: Iterable[Row], stratum: Callable[[Row], Stratum],
                       score: Callable[[Row], Any], mode: str) -> list[tuple[Row, Stratum, Optional[int]]]:
    """``(row, stratum, rank)`` grouped by stratum (natural order), best first inside each.

    ``rank`` is 1 for the best row of its stratum; rows without a finite score come last in
    their stratum with rank None (they cannot be compared)."""
    _check_mode(mode)
    ranked: list[tuple[Row, Stratum, Optional[int]]] = []
    for values, members in _groups(rows, stratum):
        scored = [(finite(score(row)), row) for row in members]
        good = sorted(((v, r) for v, r in scored if v is not None), key=lambda item: item[0] if mode == "min"
                      else -item[0])
        ranked += [(row, values, position) for position, (_, row) in enumerate(good, 1)]
        ranked += [(row, values, None) for v, row in scored if v is None]
    return ranked


def pareto_within_strata(rows: Iterable[Row], stratum: Callable[[Row], Stratum],
                         scores: Callable[[Row], Sequence[Any]], modes: Sequence[str]
                         ) -> list[tuple[Row, Stratum, Optional[int]]]:
    """``(row, stratum, front)`` for a multi-objective search: non-dominated sorting within each stratum.

    Front 1 is the stratum's Pareto front (no other row is at least as good on every objective and
    better on one); front 2 is the front once front 1 is set aside, and so on. A front's rows are in
    the order of the first objective. Rows without a finite value for every objective come last with
    front None. ``modes`` gives each objective's direction."""
    for mode in modes:
        _check_mode(mode)
    signs = [1.0 if mode == "min" else -1.0 for mode in modes]
    fronted: list[tuple[Row, Stratum, Optional[int]]] = []
    for values, members in _groups(rows, stratum):
        scored = [([finite(v) for v in scores(row)], row) for row in members]
        left = [([s * v for s, v in zip(signs, vector)], row) for vector, row in scored
                if len(vector) == len(signs) and all(v is not None for v in vector)]
        front_number = 0
        while left:
            front_number += 1
            front = [(v, r) for v, r in left if not any(_dominates(other, v) for other, _ in left)]
            fronted += [(row, values, front_number) for _, row in sorted(front, key=lambda item: item[0])]
            placed = {id(row) for _, row in front}
            left = [(v, r) for v, r in left if id(r) not in placed]
        kept = {id(row) for row, _, _ in fronted}
        fronted += [(row, values, None) for _, row in scored if id(row) not in kept]
    return fronted


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (all objectives minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


__all__ = ["parse_param", "typed_params", "stratum_of", "stratum_label", "rank_within_strata",
           "pareto_within_strata", "finite"]


# ------------------------------------------------------------------- rate families (trials equal but for λ)
LAMBDA_KEY = "loss.lmbda"
SEED_KEY = "schedule.seed"
AUXT_PREFIX = "model.auxt."
AUXT_ENABLED_KEY = "model.auxt.enabled"



def canonical(value: object) -> str:
    """A param value as MLflow stores it (``str(value)``)."""
    return value if isinstance(value, str) else str(value)


def flat_params(params: Mapping[str, object]) -> dict[str, object]:
    """Dotted keys of a nested trial config or of MLflow's flat params (returned as they are)."""
    return flatten(dict(params)) if any(isinstance(v, dict) for v in params.values()) else dict(params)


def is_truthy(value: object) -> bool:
    """Booleans as configs hold them (True) and as MLflow params hold them ("True")."""
    return canonical(value).strip().lower() in ("true", "1", "yes", "on")


def auxt_enabled(params: Mapping[str, object]) -> bool:
    """Whether a trial trains with AuxT (``model.auxt.enabled``; absent = the default, off)."""
    return is_truthy(flat_params(params).get(AUXT_ENABLED_KEY, False))


def inactive_keys(params: Mapping[str, object]) -> frozenset[str]:
    """Dotted keys that change nothing in the model a trial builds (AuxT knobs that do nothing given
    the others: :func:`trainables.config.inactive_auxt_knobs`); works on configs and MLflow params."""
    flat = flat_params(params)
    values = {key[len(AUXT_PREFIX):]: parse_param(value) for key, value in flat.items()
              if key.startswith(AUXT_PREFIX) and "." not in key[len(AUXT_PREFIX):]}
    values["enabled"] = auxt_enabled(flat)
    return frozenset(AUXT_PREFIX + knob for knob in inactive_auxt_knobs(values))


def family_params(params: Mapping[str, object], *, ignore_auxt: bool = False) -> dict[str, str]:
    """The params that define a trial's family: all but λ and the knobs that do nothing
    (:func:`inactive_keys`: all AuxT knobs of a disabled AuxT, the scaling of a DWT-less one...).

    ``params`` is a flat (dotted) or nested config. ``ignore_auxt`` drops every ``model.auxt.*``
    key as well: two families equal under it differ only in their AuxT settings.
    """
    flat = flat_params(params)
    enabled = auxt_enabled(flat)
    inactive = inactive_keys(flat)
    kept: dict[str, str] = {}
    for key, value in flat.items():
        if key == LAMBDA_KEY or key in inactive:
            continue
        if key.startswith(AUXT_PREFIX) and (ignore_auxt or not enabled):
            continue
        kept[key] = canonical(value)
    if not ignore_auxt:
        kept[AUXT_ENABLED_KEY] = str(enabled)  # absent (default) and False are the same recipe
    return dict(sorted(kept.items()))


def family_key(params: Mapping[str, object], *, ignore_auxt: bool = False) -> str:
    """Short stable hash of :func:`family_params` (what ``lic_search.family`` tags should hold)."""
    payload = json.dumps(sorted(family_params(params, ignore_auxt=ignore_auxt).items()))
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


