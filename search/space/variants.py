"""Named variants: ``label:`` on the mappings of a ``grid``/``choice``.

An ablation is read by its variants' names (the paper's "A1", "full WLS", "baseline"), not by
the knobs that tell them apart. A mapping in a grid or choice may carry ``label:``::

    auxt:
      grid:
        - {label: baseline, enabled: false}
        - {label: "A1 unconstrained", enabled: true, projection: unconstrained}

The label is taken out of the template when the space is loaded, so it never reaches Ray,
``TrialConfig`` or MLflow params; :meth:`Variants.label_of` finds it again from a trial's
config (or its MLflow params) by matching the values the variant fixes. Several labelled
sites compose: ``"A1 · cosine"``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from search.errors import SpaceError
from search.space import keypath as kp
from search.space.strata import canonical, flat_params

LABEL_KEY = "label"
SEPARATOR = " · "
MAX_LABEL = 40
WARM_START_KEYS = ("model.init_from", "model.init_from_partial")  # set on a ladder's fine-tunes, not by a variant  # a label names a column entry and a legend line; longer names wrap tables


@dataclass(frozen=True)
class Variant:
    """One labelled value of a site: the dotted keys it fixes (as MLflow strings) and those a primitive draws."""

    label: str
    fixed: tuple[tuple[str, str], ...]
    drawn: tuple[str, ...] = ()

    def matches(self, values: Mapping[str, object]) -> bool:
        """``values``: a trial's flat params under the site; equal where fixed, nothing beyond."""
        fixed = dict(self.fixed)
        if set(values) - set(fixed) - set(self.drawn):
            return False
        return all(key in values and canonical(values[key]) == value for key, value in fixed.items())


@dataclass(frozen=True)
class VariantSite:
    """A grid/choice whose mappings are labelled: its key path and variants (in file order)."""

    keys: tuple
    variants: tuple[Variant, ...]

    @property
    def prefix(self) -> str:
        return ".".join(map(str, self.keys))

    def covers(self, key: str) -> bool:
        """Whether dotted ``key`` lies under this site (a label names its value)."""
        return key == self.prefix or key.startswith(self.prefix + ".")

    def label_of(self, flat: Mapping[str, object]) -> Optional[str]:
        named = {key for variant in self.variants for key in (*dict(variant.fixed), *variant.drawn)}
        # A warm start a ladder adds to its fine-tunes (model.init_from) is no part of a variant that does not name it
        values = {k: v for k, v in flat.items() if self.covers(k) and (k not in WARM_START_KEYS or k in named)}
        found = [v.label for v in self.variants if v.matches(values)]
        return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Variants:
    """Every labelled site of a space (none: an unlabelled space, and every answer is None)."""

    sites: tuple[VariantSite, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sites)

    def labels(self) -> list[str]:
        """Every label, sites in file order, variants in file order (the paper's table order)."""
        return [v.label for site in self.sites for v in site.variants]

    def covers(self, key: str) -> bool:
        return any(site.covers(key) for site in self.sites)

    def label_of(self, config: Mapping[str, Any]) -> Optional[str]:
        """The trial's variant name (site labels joined by `` · ``); None when a site matches no variant."""
        if not self.sites:
            return None
        flat = flat_params(config)
        parts = [site.label_of(flat) for site in self.sites]
        return None if any(p is None for p in parts) else SEPARATOR.join(parts)  # type: ignore[arg-type]


def _flat_fixed(prefix: str, mapping: dict) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    fixed: list[tuple[str, str]] = []
    drawn: list[str] = []

    def walk(node: Any, path: str) -> None:
        if kp.primitive(node) is not None:
            drawn.append(path)
        elif isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        else:
            fixed.append((path, canonical(node)))

    for key, value in mapping.items():
        walk(value, f"{prefix}.{key}" if prefix else str(key))
    return tuple(fixed), tuple(drawn)


def split_labels(file: str, template: dict) -> tuple[dict, Variants]:
    """The template without labels, and its :class:`Variants`; errors name the file and key path.

    Every mapping of a labelled grid/choice needs a label (a table with a nameless row reads as
    a bug), labels are non-empty strings of at most ``MAX_LABEL`` characters, unique in their
    site, and ``label`` appears nowhere else."""
    stripped = copy.deepcopy(template)
    sites: list[VariantSite] = []
    for keys, kind, args in kp.primitive_sites(stripped):
        where = kp.dotted(keys)
        if kind not in ("grid", "choice") or not isinstance(args, list):
            continue
        labelled = [isinstance(a, dict) and LABEL_KEY in a for a in args]
        if not any(labelled):
            continue
        if not all(labelled):
            missing = labelled.index(False)
            raise SpaceError(file, f"{where}.{kind}[{missing}]", f"some values of this `{kind}` have a `label` "
                             "and this one has none: label every variant (a mapping with `label: NAME`) or none")
        variants = []
        for index, value in enumerate(args):
            label = value.pop(LABEL_KEY)
            if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
                raise SpaceError(file, f"{where}.{kind}[{index}].label", "a label is a non-empty string of at most "
                                 f"{MAX_LABEL} characters (e.g. \"A1 unconstrained\"), got {label!r}")
            if label in (v.label for v in variants):
                raise SpaceError(file, f"{where}.{kind}[{index}].label", f"label {label!r} names two variants of "
                                 "this grid; each variant needs its own")
            if not value:
                raise SpaceError(file, f"{where}.{kind}[{index}]", "a labelled variant must set at least one key "
                                 "beside `label`")
            variants.append(Variant(label.strip(), *_flat_fixed(".".join(map(str, keys)), value)))
        sites.append(VariantSite(tuple(keys), tuple(variants)))
    _reject_stray_labels(file, stripped, ())
    return stripped, Variants(tuple(sites))


def _reject_stray_labels(file: str, node: Any, keys: kp.Keys) -> None:
    """``label`` left after splitting sits outside a grid/choice value: it would reach TrialConfig."""
    found = kp.primitive(node)
    if found is not None:
        for value in found[1] if isinstance(found[1], list) else []:
            if isinstance(value, dict):
                for key, inner in value.items():
                    _reject_stray_labels(file, inner, keys + (key,))
        return
    if isinstance(node, dict):
        if LABEL_KEY in node:
            raise SpaceError(file, kp.dotted(keys + (LABEL_KEY,)), "`label` names a variant: it goes on a mapping "
                             "inside a grid or choice (e.g. `auxt: {grid: [{label: baseline, enabled: false}, ...]}`)")
        for key, value in node.items():
            _reject_stray_labels(file, value, keys + (key,))


__all__ = ["LABEL_KEY", "Variant", "VariantSite", "Variants", "split_labels"]
