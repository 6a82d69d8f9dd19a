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
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.algorithm_config import SchedulerConfig, SearchAlgorithmConfig, check_search_setup, describe_setup
from search.errors import SpaceError
from trainables.config import AuxTConfig, TrialConfig
from trainables.metrics import DEFAULT_METRIC, DEFAULT_MODE

__all__ = [
    "PRIMITIVES", "SearchAlgorithmConfig", "SchedulerConfig", "ResourcesConfig", "SpaceFile", "SearchSpec",
    "load_space", "describe_schema",
]

PRIMITIVES = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")
AUXT_PATH = ("model", "auxt")
_EDGE_CAP = 2048  # most edge-value combinations checked for interactions (every single value is always checked)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourcesConfig(_Strict):
    """What one trial holds while it runs."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved per trial (data loading).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial; fractions pack small trials on one GPU.")
    max_failures: int = Field(2, ge=0, description="Retries of a crashed trial from its last checkpoint.")


class SpaceFile(_Strict):
    """A search-space file (the YAML's top level)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$",
                      description="Search name: MLflow experiment and results folder (letters, digits, _ . -).")
    description: str = Field("", description="Free text; presets state their GPU budget here.")
    trial: dict[str, Any] = Field(..., description="Trial config template (trainables.config.TrialConfig); any "
                                  "value may be a sampling primitive.")
    search: SearchAlgorithmConfig = Field(default_factory=SearchAlgorithmConfig,
                                          description="Search algorithm settings.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="Trial scheduler settings.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Per-trial resources.")


# --------------------------------------------------------------------------- primitives

Keys = tuple  # a key path inside the trial template, e.g. ("model", "auxt", "lambda_orth")


def _primitive(node: Any) -> Optional[tuple[str, list]]:
    if isinstance(node, dict) and len(node) == 1:
        (key, value), = node.items()
        if key in PRIMITIVES:
            return key, value
    return None


def _dotted(keys: Keys, prefix: str = "trial") -> str:
    return ".".join([prefix, *map(str, keys)]) if prefix else ".".join(map(str, keys))


def _sites(node: Any, keys: Keys = ()) -> list[tuple[Keys, str, list]]:
    """Every primitive in the template: (key path, kind, args), in file order."""
    primitive = _primitive(node)
    if primitive is not None:
        return [(keys, *primitive)]
    if isinstance(node, dict):
        return [site for key, value in node.items() for site in _sites(value, keys + (key,))]
    return []


def _edge_values(kind: str, args: list) -> list:
    """Values a primitive can produce that validation must see: all of a grid/choice, the ends of a range."""
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    if kind == "quniform":
        low, high, q = args
        return [round(low / q) * q, round(high / q) * q]
    return [args[0], args[1]]


def _set(config: dict, keys: Keys, value: Any) -> None:
    node = config
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value


def _get(config: Any, keys: Keys, default: Any = None) -> Any:
    node = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _show(value: Any) -> str:
    """A value as it would be written in YAML flow style."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("...").strip()


def _show_primitive(kind: str, args: list) -> str:
    return f"{kind} {_show(list(args))}"


def _check_structure(file: str, node: Any, keys: Keys = (), inside: Optional[Keys] = None) -> None:
    """Primitives are well formed, never nested, and never mixed with ordinary keys."""
    primitive = _primitive(node)
    if primitive is not None:
        where = _dotted(keys)
        if inside is not None:
            raise SpaceError(file, where, "sampling primitives cannot be nested inside another primitive's "
                             f"values (this one is inside the one at {_dotted(inside)})")
        kind, args = primitive
        _check_primitive(file, where, kind, args)
        for value in args if isinstance(args, list) else []:
            _check_structure(file, value, keys, inside=keys)
        return
    if isinstance(node, dict):
        mixed = [k for k in node if k in PRIMITIVES]
        if mixed:
            raise SpaceError(file, _dotted(keys),
                             f"a sampling primitive is a mapping with exactly one key (`{mixed[0]}`), but this "
                             f"mapping also has {', '.join(repr(k) for k in node if k != mixed[0])}")
        for key, value in node.items():
            if not isinstance(key, str):
                raise SpaceError(file, _dotted(keys + (key,)), f"keys must be strings, got {key!r}")
            _check_structure(file, value, keys + (key,), inside)
    elif isinstance(node, list):
        for value in node:
            _check_structure(file, value, keys, inside)


def _check_primitive(file: str, where: str, kind: str, args: Any) -> None:
    if not isinstance(args, list):
        raise SpaceError(file, where, f"`{kind}` takes a list, got {args!r}")
    if kind in ("grid", "choice"):
        if not args:
            raise SpaceError(file, where, f"`{kind}` needs at least one value, but got an empty list")
        if kind == "grid":
            seen: list = []
            for value in args:
                if value in seen and type(value) is type(seen[seen.index(value)]):
                    raise SpaceError(file, where, f"`grid` values must be distinct (repeat trials with "
                                     f"search.num_samples), but {_show(value)} appears twice in {_show(args)}")
                seen.append(value)
        return
    expected = 3 if kind == "quniform" else 2
    shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
    if len(args) != expected or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SpaceError(file, where, f"`{kind}` takes {shape} numbers, got {_show(args)}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SpaceError(file, where, f"`randint` takes integers [low, high], got {_show(args)}")
    low, high = args[0], args[1]
    if not low < high:
        raise SpaceError(file, where, f"`{kind}` needs low < high, but got (low={low}, high={high})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(file, where, f"`loguniform` needs 0 < low < high, but got low={low}")
    if kind == "quniform" and not args[2] > 0:
        raise SpaceError(file, where, f"`quniform` needs q > 0, but got q={args[2]}")


# --------------------------------------------------------------------------- conditional AuxT knobs

def _collapse_auxt(template: dict) -> tuple[dict, Optional[str]]:
    """Vary AuxT knobs only where AuxT is on (module docstring). Returns (template, note or None).

    ``enabled: {grid: [true, false]}`` beside other ``model.auxt`` keys becomes one grid over
    whole ``auxt`` mappings: one per combination of the knobs' grid values with AuxT on, and
    a single ``{enabled: false}`` (knobs at their defaults). Non-grid primitives stay inside
    the AuxT-on mappings, where Ray resolves them.
    """
    auxt = _get(template, AUXT_PATH)
    if not isinstance(auxt, dict) or _primitive(auxt) is not None:
        return template, None
    enabled = _primitive(auxt.get("enabled"))
    knobs = {k: v for k, v in auxt.items() if k != "enabled"}
    if enabled is None or enabled[0] != "grid" or not knobs:
        return template, None
    values = enabled[1]
    if not (any(v is True for v in values) and any(v is False for v in values)):
        return template, None
    grid_knobs = [(k, v["grid"]) for k, v in knobs.items() if _primitive(v) and _primitive(v)[0] == "grid"]
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
    _set(collapsed, AUXT_PATH, {"grid": variants})
    naive = len(values) * len(on_variants)
    note = (f"model.auxt: AuxT knobs vary only where AuxT is on: {len(on_variants)} AuxT-on + 1 AuxT-off "
            f"grid points (not {naive})")
    return collapsed, note


# --------------------------------------------------------------------------- YAML

def _load_yaml(file: str, text: str) -> Any:
    """``safe_load`` plus two checks with key paths: no duplicate keys, no non-standard tags."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as error:
            raise _yaml_error(file, error) from None
        if node is None:
            return None
        _check_nodes(file, node, ())
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as error:
            raise _yaml_error(file, error) from None
    finally:
        loader.dispose()


def _yaml_error(file: str, error: yaml.YAMLError) -> SpaceError:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error)
    return SpaceError(file, "", f"invalid YAML{where}: {problem}")


def _check_nodes(file: str, node: yaml.Node, keys: Keys) -> None:
    line = f"line {node.start_mark.line + 1}"
    if node.tag not in yaml.SafeLoader.yaml_constructors:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SpaceError(file, ".".join(map(str, keys)), f"YAML tag {tag} ({line}) is not allowed: space files are "
                         "loaded safely, so tags like !!python/object that build Python objects are refused; "
                         "write plain mappings, lists, strings, numbers and booleans")
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in seen:
                raise SpaceError(file, ".".join(map(str, keys + (key,))),
                                 f"duplicate key (line {seen[key]} and line {key_node.start_mark.line + 1}); "
                                 "a YAML mapping may set each key once")
            seen[key] = key_node.start_mark.line + 1
            _check_nodes(file, key_node, keys)
            _check_nodes(file, value_node, keys + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_nodes(file, item, keys + (index,))


# --------------------------------------------------------------------------- pydantic errors

def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _model_of(annotation: Any) -> Optional[type[BaseModel]]:
    annotation = _unwrap_optional(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _walk_loc(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], list[str], Optional[str]]:
    """Follow ``loc`` through the model classes: (model holding the last field, field path, field name)."""
    model, path, field = root, [], None
    for part in loc:
        if field is not None:
            sub = _model_of(model.model_fields[field].annotation)
            if sub is None:
                if isinstance(part, int):
                    path.append(str(part))
                    continue
                break  # a union-member tag or a list index: the field itself is the place
            model, field = sub, None
        if isinstance(part, str) and part in model.model_fields:
            field = part
            path.append(part)
        else:
            path.append(str(part))
            break
    return model, path, field


def _describe_type(annotation: Any, info: Any = None) -> str:
    """Human text for what a field accepts (used in errors and in ``describe_schema``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    bounds = ""
    if info is not None:
        parts = []
        for meta in getattr(info, "metadata", []):
            for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                if getattr(meta, attr, None) is not None:
                    parts.append(f"{sign} {getattr(meta, attr)}")
            if getattr(meta, "pattern", None):
                parts.append(f"matching {meta.pattern}")
        bounds = f" {' and '.join(parts)}" if parts else ""
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = " or ".join(_describe_type(a) for a in members)
        return f"{text}{bounds} or null" if type(None) in args else text
    if origin is tuple:
        kinds = {_describe_type(a) for a in args if a is not Ellipsis}
        return f"a list of {len(args)} {'numbers' if kinds == {'a number'} else 'values'}"
    if origin is list:
        return f"a list of {_describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a folder path"}
    if annotation in names:
        return names[annotation] + bounds
    model = _model_of(annotation)
    if model is not None:
        return "a mapping with keys " + ", ".join(model.model_fields)
    return getattr(annotation, "__name__", str(annotation))


def _suggest(word: Any, candidates: list[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(root: type[BaseModel], error: dict, prefix: str) -> tuple[str, str]:
    """(key path, message) for one pydantic error, with allowed values / valid keys."""
    model, path, field = _walk_loc(root, tuple(error["loc"]))
    where = ".".join([prefix, *path]) if prefix else ".".join(path)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        key = path[-1]
        valid = list(model.model_fields)
        return where, f"unknown key {key!r}; valid keys here: {', '.join(valid)}{_suggest(key, valid)}"
    if kind == "missing":
        info = model.model_fields.get(field) if field else None
        about = f" ({info.description})" if info is not None and info.description else ""
        return where, f"required key missing{about}"
    if field is None:
        return where, error["msg"]
    info = model.model_fields[field]
    allowed = _describe_type(info.annotation, info)
    if kind == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        if field == "wavelet" and isinstance(value, str):
            import pywt

            message += _suggest(value, pywt.wavelist(kind="discrete"))
        return where, message
    literals = [a for a in typing.get_args(_unwrap_optional(info.annotation)) if isinstance(a, str)]
    if typing.get_origin(_unwrap_optional(info.annotation)) is Union:
        literals = [a for arg in typing.get_args(info.annotation) if typing.get_origin(arg) is Literal
                    for a in typing.get_args(arg)]
    return where, f"must be {allowed}, but got {_show(value)}{_suggest(value, literals) if literals else ''}"


def _pydantic_error(file: str, root: type[BaseModel], error: ValidationError, prefix: str,
                    context: str = "") -> SpaceError:
    problems = [_explain(root, e, prefix) for e in error.errors()]
    (where, message), rest = problems[0], problems[1:]
    text = message + context
    if rest:
        text += "".join(f"\n  also {file}: {w}: {m}" for w, m in rest[:5])
        if len(rest) > 5:
            text += f"\n  ... and {len(rest) - 5} more"
    return SpaceError(file, where, text)


# --------------------------------------------------------------------------- data paths

def _resolve_path(file: str, where: str, value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise SpaceError(file, where, f"environment variable in {value!r} is not set")
    path = Path(expanded)
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(file: str, trial: dict, base: Path) -> None:
    """Data folders relative to the space file (inside grid/choice values too)."""
    data = trial.get("data")
    datas = _primitive(data)[1] if _primitive(data) and isinstance(_primitive(data)[1], list) else [data]
    for entry in datas:
        if not isinstance(entry, dict):
            continue
        for key in ("train", "eval"):
            value = entry.get(key)
            where = f"trial.data.{key}"
            primitive = _primitive(value)
            if primitive is None:
                entry[key] = _resolve_path(file, where, value, base)
            elif primitive[0] in ("grid", "choice") and isinstance(primitive[1], list):
                value[primitive[0]] = [_resolve_path(file, where, v, base) for v in primitive[1]]


# --------------------------------------------------------------------------- the spec

class SearchSpec:
    """A validated space: what the tuner needs, and the resolved template for display."""

    def __init__(self, path: Path, file: SpaceFile):
        self.path = path
        self.file = file
        self.template, self.collapse_note = _collapse_auxt(file.trial)
        self.warnings: list[str] = []

    @property
    def name(self) -> str:
        return self.file.name

    def param_space(self) -> dict:
        """The trial template (AuxT-collapsed) with primitives turned into Ray Tune domains."""
        from ray import tune

        def to_domain(node: Any) -> Any:
            primitive = _primitive(node)
            if primitive is None:
                if isinstance(node, dict):
                    return {k: to_domain(v) for k, v in node.items()}
                return node
            kind, args = primitive
            if kind == "grid":
                return tune.grid_search([to_domain(a) for a in args])
            if kind == "choice":
                return tune.choice(list(args))
            if kind == "uniform":
                return tune.uniform(*args)
            if kind == "loguniform":
                return tune.loguniform(*args)
            if kind == "randint":
                return tune.randint(*args)
            return tune.quniform(*args)

        return to_domain(self.template)

    def grid_size(self) -> int:
        """Grid points: the product of the grid sizes (after the AuxT collapse)."""
        return math.prod(len(args) for _, kind, args in _sites(self.template) if kind == "grid")

    def trial_count(self) -> int:
        return self.grid_size() * self.file.search.num_samples

    def configs(self) -> Iterator[dict]:
        """Plain trial configs covering every value of every primitive (see :func:`_edge_configs`).

        Drawn from the file's template, not the AuxT-collapsed one: the same values, but no
        primitive sits inside another's values there."""
        return _edge_configs(self.file.trial)

    def budget(self) -> int:
        """The largest iteration budget any trial can get (ASHA's max_t)."""
        return max(int(c["schedule"]["iterations"]) for c in self.configs())

    def describe(self) -> str:
        """What `lic-search validate` prints: resolved template, counts, budget and settings."""
        return _describe_spec(self)


def _edge_configs(template: dict) -> Iterator[dict]:
    """Plain configs: the base (every primitive at its first edge value), each other edge value of
    each primitive alone, then edge-value combinations (capped at ``_EDGE_CAP``)."""
    sites = [(keys, _edge_values(kind, args)) for keys, kind, args in _sites(template)]

    def build(values: list) -> dict:
        config = copy.deepcopy(template)
        for (keys, _), value in zip(sites, values):
            if keys:
                _set(config, keys, copy.deepcopy(value))
            else:
                config = copy.deepcopy(value)
        return config

    base = [values[0] for _, values in sites]
    yield build(base)
    for index, (_, values) in enumerate(sites):
        for value in values[1:]:
            yield build(base[:index] + [value] + base[index + 1:])
    for count, combo in enumerate(itertools.product(*(values for _, values in sites))):
        if count >= _EDGE_CAP:
            return
        yield build(list(combo))


def _site_of(config: dict, base: dict, template: dict) -> str:
    """Which primitive's value made ``config`` differ from the base (for error context)."""
    for keys, kind, _ in _sites(template):
        value = _get(config, keys) if keys else config
        if value != (_get(base, keys) if keys else base):
            return f" (when {_dotted(keys)} takes its {kind} value {_show(value)})"
    return ""


def _check_trials(file: str, spec: SearchSpec) -> list[TrialConfig]:
    """Validate every edge config; return the validated configs (deduplicated)."""
    trials: list[TrialConfig] = []
    seen: set[str] = set()
    base: Optional[dict] = None
    for config in spec.configs():
        base = config if base is None else base
        key = repr(config)
        if key in seen:
            continue
        seen.add(key)
        try:
            trials.append(TrialConfig.model_validate(config))
        except ValidationError as error:
            raise _pydantic_error(file, TrialConfig, error, "trial", _site_of(config, base, spec.file.trial)) from None
    return trials


def _check_auxt_knobs(file: str, trials: list[TrialConfig]) -> None:
    """Reject AuxT knobs that no trial would use (AuxT off wherever they are set)."""
    defaults = AuxTConfig()
    for name in AuxTConfig.model_fields:
        if name == "enabled":
            continue
        used = [t.model.auxt for t in trials if getattr(t.model.auxt, name) != getattr(defaults, name)]
        if used and not any(a.enabled for a in used):
            raise SpaceError(file, f"trial.model.auxt.{name}", f"has no effect: AuxT is off (model.auxt.enabled "
                             f"is false) in every trial that sets it to {_show(getattr(used[0], name))}; AuxT knobs "
                             "only act when AuxT is on: set model.auxt.enabled to true (or a grid with true), "
                             "or remove the key")


def _check_models(file: str, trials: list[TrialConfig]) -> None:
    """Backbone names against the registry; AuxT stages against the backbone's stage count."""
    try:
        from trainables.backbones import BACKBONES, get_backbone  # noqa: F401  (fills the registry)
        from trainables.auxt.attach import selected_stages
    except ImportError:  # the registry is optional for validation (e.g. a partial install)
        return
    from trainables.errors import LicSearchError

    for trial in trials:
        name = trial.model.backbone
        if name not in BACKBONES:
            allowed = sorted(BACKBONES)
            raise SpaceError(file, "trial.model.backbone", f"unknown backbone {name!r}; allowed: "
                             f"{', '.join(allowed)}{_suggest(name, allowed)}")
        if trial.model.auxt.enabled:
            try:
                selected_stages(trial.model.auxt, BACKBONES[name].num_stages)
            except LicSearchError as error:
                raise SpaceError(file, "trial.model.auxt.stages", f"{error} (backbone {name!r} has "
                                 f"{BACKBONES[name].num_stages} stages)") from None
    built: set[str] = set()
    for trial in trials:
        model = trial.model
        key = model.model_dump_json()
        if (model.N is None and model.M is None) or key in built:
            continue  # registered default widths are tested with the registry
        built.add(key)
        _try_build(file, model)


def _try_build(file: str, model: Any) -> None:
    """Build a model at user-set widths once on the CPU, so a width the backbone cannot take
    (e.g. TCM's M must be a multiple of its 5 slices) fails here, not inside a trial."""
    import torch

    from trainables.model import create_model

    try:
        with torch.no_grad():
            create_model(model)
    except Exception as error:  # noqa: BLE001  (any builder failure is a property of the config)
        widths = f"N={model.N}, M={model.M}"
        raise SpaceError(file, "trial.model", f"backbone {model.backbone!r} cannot be built with {widths}"
                         f"{' and AuxT' if model.auxt.enabled else ''}: {error}") from None


def _check_data(file: str, trials: list[TrialConfig]) -> None:
    from trainables.data import check_data_config
    from trainables.errors import DataError

    checked: set[str] = set()
    for trial in trials:
        data = trial.data
        key = data.model_dump_json()
        if key in checked:
            continue
        checked.add(key)
        try:
            check_data_config(data)
        except DataError as error:
            key = getattr(error, "key", None)
            text = str(error)
            if key in ("train", "eval"):
                text = text.removeprefix(f"{key}: ")
            if "does not exist" in text:
                text += " (relative paths are resolved against the space file's folder)"
            raise SpaceError(file, f"trial.data.{key}" if key else "trial.data", text) from None


def _check_search(file: str, spec: SearchSpec, trials: list[TrialConfig]) -> None:
    search, scheduler = spec.file.search, spec.file.scheduler
    check_search_setup(search, scheduler, spec.file.trial, spec.budget(), file)
    random_sites = [s for s in _sites(spec.template) if s[1] != "grid"]
    if search.num_samples > 1 and not random_sites:
        spec.warnings.append(f"search.num_samples is {search.num_samples} but nothing is random: each grid "
                             "point trains the same config num_samples times (vary schedule.seed to repeat runs)")


def load_space(path: str | Path, check_data: bool = True) -> SearchSpec:
    """Read, validate and resolve a space file; raise :class:`SpaceError` on any problem."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise SpaceError(file, "", "file not found")
    raw = _load_yaml(file, path.read_text())
    if not isinstance(raw, dict):
        raise SpaceError(file, "", "a space file is a mapping with keys " + ", ".join(SpaceFile.model_fields)
                         + f"; got {type(raw).__name__}")
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise _pydantic_error(file, SpaceFile, error, "") from None
    if _primitive(space.trial) is not None:
        raise SpaceError(file, "trial", "the trial section is a mapping of trial keys (model, data, loss, "
                         "schedule, performance); put sampling primitives on its values")
    _check_structure(file, space.trial)
    _resolve_paths(file, space.trial, path.parent)
    spec = SearchSpec(path.resolve(), space)
    trials = _check_trials(file, spec)
    _check_auxt_knobs(file, trials)
    _check_models(file, trials)
    _check_search(file, spec, trials)
    if check_data:
        _check_data(file, trials)
    return spec


# --------------------------------------------------------------------------- display

def _render(node: Any, indent: int = 2) -> list[str]:
    pad = " " * indent
    lines = []
    for key, value in node.items():
        primitive = _primitive(value)
        if primitive is not None and primitive[0] == "grid" and any(isinstance(v, dict) for v in primitive[1]):
            lines.append(f"{pad}{key}: grid of {len(primitive[1])}:")
            lines.extend(f"{pad}  - {_show(v)}" for v in primitive[1])
        elif primitive is not None:
            lines.append(f"{pad}{key}: {_show_primitive(*primitive)}")
        elif isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(_render(value, indent + 2))
        else:
            lines.append(f"{pad}{key}: {_show(value)}")
    return lines


def _overlay(full: Any, template: Any) -> Any:
    """The template's primitives laid over a fully defaulted config."""
    if _primitive(template) is not None or not isinstance(template, dict) or not isinstance(full, dict):
        return template
    merged = dict(full)
    for key, value in template.items():
        merged[key] = _overlay(full.get(key), value)
    return merged


def _describe_spec(spec: SearchSpec) -> str:
    file = spec.file
    base = TrialConfig.model_validate(next(spec.configs())).model_dump(mode="json")
    lines = [f"space: {spec.path}", f"name: {file.name}"]
    if file.description:
        lines.append(f"description: {file.description}")
    lines.append("trial (every key, defaults filled in):")
    lines.extend(_render(_overlay(base, file.trial)))
    sites = _sites(spec.template)
    grids = [f"{_dotted(k, '')} ({len(a)})" for k, kind, a in sites if kind == "grid"]
    lines.append("")
    if spec.collapse_note:
        lines.append(spec.collapse_note)
    lines.append(f"grid: {' x '.join(grids) if grids else 'none'} = {spec.grid_size()} point(s)")
    lines.append(f"trials: {spec.grid_size()} grid point(s) x {file.search.num_samples} sample(s) = "
                 f"{spec.trial_count()}")
    budgets = sorted({(c["schedule"]["iterations"], tuple(c["schedule"].get("milestones", ())))
                      for c in (TrialConfig.model_validate(c).model_dump(mode="json") for c in spec.configs())})
    shown = []
    for iterations, milestones in budgets:
        decay = ", ".join(str(int(round(m * iterations))) for m in milestones)
        shown.append(f"{iterations}" + (f" (lr decay at {decay})" if decay else ""))
    lines.append(f"iteration budget: {spec.budget()} (max); per trial: {'; '.join(shown)}")
    lines.extend(describe_setup(file.search, file.scheduler, spec.budget()))
    r = file.resources
    lines.append(f"resources: {r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU per trial; "
                 f"{r.max_failures} retries from checkpoint")
    lines.extend(f"warning: {w}" for w in spec.warnings)
    return "\n".join(lines)


def describe_schema() -> str:
    """Every key of a space file with its type, default and description (``lic-search validate --keys``)."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            dotted = f"{prefix}{name}"
            sub = _model_of(info.annotation)
            if name == "trial" and model is SpaceFile:
                lines.append(f"{dotted}: {info.description}")
                walk(TrialConfig, "trial.")
                continue
            if sub is not None:
                lines.append(f"{dotted}: {(sub.__doc__ or '').strip().splitlines()[0] if sub.__doc__ else ''}")
                walk(sub, dotted + ".")
                continue
            default = "required" if info.is_required() else f"default {_show(info.get_default(call_default_factory=True))}"
            about = f" {info.description}" if info.description else ""
            lines.append(f"{dotted}: {_describe_type(info.annotation, info)}; {default}.{about}")

    walk(SpaceFile, "")
    return "\n".join(lines)
