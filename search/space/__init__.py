"""Search-space files: YAML -> validated :class:`SearchSpec` -> Ray Tune ``param_space``.

A space file has four optional sections beside ``name``/``description``: ``trial`` (shaped
like :class:`trainables.config.TrialConfig`), ``search``, ``scheduler`` and ``resources``
(the pydantic models below). In ``trial`` any value may be a sampling primitive, a one-key
mapping:

``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [low, high]}``,
``{loguniform: [low, high]}``, ``{randint: [low, high]}`` (high exclusive),
``{quniform: [low, high, q]}``.

Conditional keys: the AuxT knobs (``model.auxt.*`` other than ``enabled``) only act when
AuxT is on. With ``enabled: {grid: [true, false]}`` the AuxT-off branch is generated once,
with the knobs at their defaults, instead of once per combination of knob values (those
trials would all train the same model); a space in which AuxT is off in every trial but
an AuxT knob is set to something other than its default is rejected.

Everything is checked before Ray starts: the YAML is loaded safely (no ``!!python`` tags,
no duplicate keys); every value every primitive can produce is validated against
``TrialConfig``; backbone names against the registry; data folders must exist and hold
images. Errors name the file, the key path and the allowed values. Relative data paths
(``~`` and ``$VARS`` expanded) are resolved against the space file's folder.

This package is the public face; the work is split by job: :mod:`search.space.load`
(YAML, paths), :mod:`search.space.validate` (every check), :mod:`search.space.spec`
(the validated :class:`SearchSpec`), :mod:`search.space.describe` (what ``validate`` prints).
"""

from search.space.describe import describe_schema
from search.space.files import ResourcesConfig, SpaceFile
from search.space.keypath import PRIMITIVES
from search.space.load import load_space
from search.space.sections import SchedulerConfig, SearchAlgorithmConfig
from search.space.spec import SearchSpec

__all__ = [
    "PRIMITIVES", "SearchAlgorithmConfig", "SchedulerConfig", "ResourcesConfig", "SpaceFile", "SearchSpec",
    "load_space", "describe_schema",
]
