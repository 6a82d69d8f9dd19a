"""A validated space (:class:`SearchSpec`): the AuxT collapse, Ray Tune domains, edge configs.

The edge configs are the plain trial configs validation must see: every value of every
grid/choice and both ends of every range, alone and (up to ``EDGE_CAP``) in combination.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Iterator, Optional

from search.space import keypath as kp
from search.space.describe import describe_spec
from search.space.files import SpaceFile
from search.space.primitives import KINDS
from search.space.variants import Variants
from search.space.sections import stratify_keys

AUXT_PATH = ("model", "auxt")
EDGE_CAP = 2048  # most edge-value combinations checked for interactions (every single value is always checked)


def edge_values(kind: str, args: list) -> list:
    """Values a primitive can produce that validation must see: all of a grid/choice, the ends of a range."""
    return KINDS[kind].edges(args)


def collapse_auxt(template: dict) -> tuple[dict, Optional[str]]:
    """Vary AuxT knobs only where AuxT is on (module docstring). Returns (template, note or None).

    ``enabled: {grid: [true, false]}`` beside other ``model.auxt`` keys becomes one grid over
    whole ``auxt`` mappings: one per combination of the knobs' grid values with AuxT on, and
    a single ``{enabled: false}`` (knobs at their defaults). Non-grid primitives stay inside
    the AuxT-on mappings, where Ray resolves them.
    """
    auxt = kp.get_path(template, AUXT_PATH)
    if not isinstance(auxt, dict) or kp.primitive(auxt) is not None:
        return template, None
    enabled = kp.primitive(auxt.get("enabled"))
    knobs = {k: v for k, v in auxt.items() if k != "enabled"}
    if enabled is None or enabled[0] != "grid" or not knobs:
        return template, None
    values = enabled[1]
    if not (any(v is True for v in values) and any(v is False for v in values)):
        return template, None
    grid_knobs = [(k, v["grid"]) for k, v in knobs.items() if kp.primitive(v) and kp.primitive(v)[0] == "grid"]
    on_variants = []
    for combo in itertools.product(*(vals for _, vals in grid_knobs)):
        variant = {"enabled": True, **copy.deepcopy(knobs)}
        for (key, _), value in zip(grid_knobs, combo):
            variant[key] = value
        on_variants.append(variant)
    variants = []
    for value in values:
        variants.extend(on_variants if value is True else [{"enabled": False}])
    collapsed = copy.deepcopy(template)
    kp.set_path(collapsed, AUXT_PATH, {"grid": variants})
    naive = len(values) * len(on_variants)
    note = (f"model.auxt: AuxT knobs vary only where AuxT is on: {len(on_variants)} AuxT-on + 1 AuxT-off "
            f"grid points (not {naive})")
    return collapsed, note



class SearchSpec:
    """A validated space: what the tuner needs, and the resolved template for display."""

    def __init__(self, path: Path, file: SpaceFile, variants: Optional[Variants] = None,
                 trial: Optional[dict] = None):
        self.path = path
        self.file = file
        self.variants = variants or Variants()  # the labelled grid/choice values (search.space.variants)
        self.trial = file.trial if trial is None else trial  # the file's trial section without labels
        self.template, self.collapse_note = collapse_auxt(self.trial)
        self.warnings: list[str] = []

    @property
    def name(self) -> str:
        return self.file.name

    def param_space(self) -> dict:
        """The trial template (AuxT-collapsed) with primitives turned into Ray Tune domains."""
        from ray import tune

        def to_domain(node: Any) -> Any:
            primitive = kp.primitive(node)
            if primitive is None:
                if isinstance(node, dict):
                    return {k: to_domain(v) for k, v in node.items()}
                return node
            kind, args = primitive
            if kind == "grid":
                return tune.grid_search([to_domain(a) for a in args])
            return KINDS[kind].domain(args)

        return to_domain(self.template)

    def grid_size(self) -> int:
        """Grid points: the product of the grid sizes (after the AuxT collapse)."""
        return math.prod(len(args) for _, kind, args in kp.primitive_sites(self.template) if kind == "grid")

    def trial_count(self) -> int:
        return self.grid_size() * self.file.search.num_samples

    def configs(self) -> Iterator[dict]:
        """Plain trial configs covering every value of every primitive (see :func:`_edge_configs`).

        Drawn from the file's template, not the AuxT-collapsed one: the same values, but no
        primitive sits inside another's values there."""
        return edge_configs(self.trial)

    def budget(self) -> int:
        """The largest iteration budget any trial can get (ASHA's max_t)."""
        return max(int(c["schedule"]["iterations"]) for c in self.configs())

    def stratify_by(self) -> list[str]:
        """Keys whose values must match for two trials to be compared (``search.stratify_by``, plus
        ``schedule.iterations``/``milestones`` under ASHA where they vary)."""
        return stratify_keys(self.file.search, self.file.scheduler, self.trial)

    def baseline_label(self) -> Optional[str]:
        """The label of the baseline variant rate savings are measured against (``search.baseline``), if set."""
        return self.file.search.baseline.label if self.file.search.baseline is not None else None

    def describe(self) -> str:
        """What `lic-search validate` prints: resolved template, counts, budget and settings."""
        return describe_spec(self)


def edge_configs(template: dict) -> Iterator[dict]:
    """Plain configs: the base (every primitive at its first edge value), each other edge value of
    each primitive alone, then edge-value combinations (capped at ``EDGE_CAP``)."""
    sites = [(keys, edge_values(kind, args)) for keys, kind, args in kp.primitive_sites(template)]

    def build(values: list) -> dict:
        return kp.substitute(template, ((keys, value) for (keys, _), value in zip(sites, values)))

    base = [values[0] for _, values in sites]
    yield build(base)
    for index, (_, values) in enumerate(sites):
        for value in values[1:]:
            yield build(base[:index] + [value] + base[index + 1:])
    for count, combo in enumerate(itertools.product(*(values for _, values in sites))):
        if count >= EDGE_CAP:
            return
        yield build(list(combo))

