"""What tells a search's trials apart, in words a person reads at a glance.

One place for the keys that vary across a search's trials and how to show them: ``best``'s
columns, MLflow trial run names (``λ=0.0035 · auxt=haar · lr=2.2e-3``), readable family
names, the live console and ``status``. The keys come from the trials' configs: either the
space's edge configs (:meth:`SearchSpec.configs`, known before any trial runs) or the
trials themselves (MLflow params). A key a config leaves out takes its
:class:`TrialConfig` default, so a mapping-valued grid point that sets only
``auxt.downsample`` still differs from one that leaves it at ``dwt``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from search.space.sections import trial_default
from search.space.strata import AUXT_ENABLED_KEY, auxt_enabled, flat_params, inactive_keys
from search.space.variants import Variants

LAMBDA_KEY = "loss.lmbda"
AUXT_KEY = AUXT_ENABLED_KEY  # shown as the AuxT setting: "off" or the wavelet (and placement)
AUXT_PREFIX = "model.auxt."
VARIANT_KEY = "variant"  # not a config key: the trial's variant label (``label:`` in the space)
SEPARATOR = " · "
NOT_APPLICABLE = "n/a"  # a knob that does nothing in this trial's model (not "left at its default")
#: Headers for keys whose last component alone would say too little.
LABELS = {LAMBDA_KEY: "λ", AUXT_KEY: "auxt", "model.auxt.lambda_orth": "λ_orth", "schedule.lr": "lr",
          "model.init_from": "init", VARIANT_KEY: "variant"}
_SECTIONS = ("model.", "loss.", "schedule.", "data.")


def raw_value(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a nested or flat config; its TrialConfig default when left out."""
    flat = flat_params(config)
    return flat[key] if key in flat else trial_default(key)


def _same(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value


def varying_keys(configs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose value differs between ``configs`` (first-seen order; defaults fill gaps).

    Values are compared as MLflow stores them (``str``) so configs and MLflow params agree."""
    flats = [flat_params(c) for c in configs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    return [k for k in keys if len({str(raw_value(f, k)) for f in flats}) > 1]


def column_keys(configs: Iterable[Mapping[str, Any]], variants: Variants = Variants()) -> list[str]:
    """What distinguishes trials: the variant label (labelled spaces), λ, the AuxT setting, then every
    other varying key; keys under a labelled grid/choice are named by the label instead."""
    head = ([VARIANT_KEY] if variants else []) + [LAMBDA_KEY] + ([] if variants.covers(AUXT_KEY) else [AUXT_KEY])
    return head + [k for k in varying_keys(configs) if k not in head and not variants.covers(k)]


def label(key: str, keys: Sequence[str] = ()) -> str:
    """A short header for ``key``: ``λ``, ``auxt``, ``λ_orth``, ``lr``, ``auxt.downsample``.

    The config section is dropped (``model.``/``loss.``/...) unless that makes two of
    ``keys`` read the same; then the full dotted key."""
    if key in LABELS:
        return LABELS[key]
    short = key.split(".", 1)[1] if key.startswith(_SECTIONS) else key
    others = [label(k) for k in keys if k != key and k not in LABELS]
    return key if short in others else short


def auxt_setting(config: Mapping[str, Any]) -> str:
    """``off``, or what replaces the backbone's resampling in the shortcut: the wavelet (``haar``) or,
    without a DWT, the downsampling (``avgpool``), with the placement when not both transforms."""
    placement = str(raw_value(config, "model.auxt.placement") or "both")
    if not auxt_enabled(config) or placement == "none":
        return "off"
    downsample = str(raw_value(config, "model.auxt.downsample") or "dwt")
    basis = str(raw_value(config, "model.auxt.wavelet") or "on") if downsample == "dwt" else downsample
    return basis if placement == "both" else f"{basis}/{placement}"


def show(value: Any, key: str = "") -> str:
    """A value as short as it can be and still be told apart: ``0.0035``, ``2.2e-3``, ``avgpool``."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if key == LAMBDA_KEY or value == 0.0:
            return f"{value:g}"
        if abs(value) < 0.01 or abs(value) >= 1e4:
            mantissa, exponent = f"{value:.1e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def value(config: Mapping[str, Any], key: str, variant: Optional[str] = None) -> str:
    """The shown value of ``key`` in a trial's config: the variant label for ``variant``, the AuxT
    setting for ``auxt``, ``n/a`` for a knob that does nothing in the model built (AuxT off, scaling
    without a DWT...), the default itself for a key left out."""
    if key == VARIANT_KEY:
        return variant or "?"
    if key == AUXT_KEY:
        return auxt_setting(config)
    if key in inactive_keys(config):
        return NOT_APPLICABLE
    if key == INIT_FROM_KEY:
        return init_source(raw_value(config, key))
    return show(raw_value(config, key), key)


INIT_FROM_KEY = "model.init_from"
_RAY_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})_\d+_")  # in Ray's trial folder names


def init_source(path: Any) -> str:
    """Where a trial's weights started: ``scratch``, the start-point trial id of a ladder checkpoint, or the file name."""
    if path in (None, "", "None"):
        return "scratch"
    text = str(path)
    found = _RAY_TRIAL_ID.search(text)
    return f"trial {found.group(1)}" if found else text.rstrip("/").rsplit("/", 1)[-1]


def trial_name(config: Mapping[str, Any], keys: Sequence[str] = (LAMBDA_KEY, AUXT_KEY),
               variant: Optional[str] = None) -> str:
    """``A1 unconstrained · λ=0.0035`` or ``λ=0.0035 · auxt=haar · lr=2.2e-3``: the trial's values at
    ``keys`` (see :func:`column_keys`), the variant label as it is."""
    return SEPARATOR.join(value(config, k, variant) if k == VARIANT_KEY else f"{label(k, keys)}={value(config, k)}"
                          for k in keys)


def family_name(config: Mapping[str, Any], keys: Sequence[str] = (LAMBDA_KEY, AUXT_KEY),
                variant: Optional[str] = None) -> str:
    """A rate family's readable name: the trial name without λ (what its trials share)."""
    return trial_name(config, [k for k in keys if k != LAMBDA_KEY], variant)


def described(config: Mapping[str, Any], keys: Optional[Sequence[str]],
              variant: Optional[str] = None) -> dict[str, str]:
    """``{dotted key: shown value}`` for ``keys`` (JSON output: full keys, readable values)."""
    return {k: value(config, k, variant) for k in (keys or (LAMBDA_KEY, AUXT_KEY))}


__all__ = ["LAMBDA_KEY", "AUXT_KEY", "VARIANT_KEY", "NOT_APPLICABLE", "varying_keys",
           "column_keys", "label", "auxt_setting", "show", "value",
           "trial_name", "family_name", "described", "raw_value"]
