"""Validation of a loaded space: primitive shapes, every edge config against ``TrialConfig``,
backbones, AuxT knobs, data folders and the search/scheduler setup. Errors are
:class:`SpaceError` with the file, the key path and the allowed values.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ValidationError

from search.errors import SpaceError
from search.space import keypath as kp
from search.space.describe import describe_type, model_of, show, unwrap_optional
from search.space.resources import check_resources
from search.space.keypath import PRIMITIVES
from search.space.ladder import check_ladder
from search.space.sections import check_search_setup
from search.space.spec import SearchSpec
from search.space.training_data import check_training_data
from search.space.strata import family_params, parse_param
from trainables.config import BACKBONE_OPTION_SECTIONS, AuxTConfig, ModelConfig, TrialConfig


def check_structure(file: str, node: Any, keys: kp.Keys = (), inside: Optional[kp.Keys] = None) -> None:
    """Primitives are well formed, never nested, and never mixed with ordinary keys."""
    primitive = kp.primitive(node)
    if primitive is not None:
        where = kp.dotted(keys)
        if inside is not None:
            raise SpaceError(file, where, "sampling primitives cannot be nested inside another primitive's "
                             f"values (this one is inside the one at {kp.dotted(inside)})")
        kind, args = primitive
        _check_primitive(file, where, kind, args)
        for value in args if isinstance(args, list) else []:
            check_structure(file, value, keys, inside=keys)
        return
    if isinstance(node, dict):
        mixed = [k for k in node if k in PRIMITIVES]
        if mixed:
            raise SpaceError(file, kp.dotted(keys),
                             f"a sampling primitive is a mapping with exactly one key (`{mixed[0]}`), but this "
                             f"mapping also has {', '.join(repr(k) for k in node if k != mixed[0])}")
        for key, value in node.items():
            if not isinstance(key, str):
                raise SpaceError(file, kp.dotted(keys + (key,)), f"keys must be strings, got {key!r}")
            check_structure(file, value, keys + (key,), inside)
    elif isinstance(node, list):
        for value in node:
            check_structure(file, value, keys, inside)


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
                                     f"search.num_samples), but {show(value)} appears twice in {show(args)}")
                seen.append(value)
        return
    expected = 3 if kind == "quniform" else 2
    shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
    if len(args) != expected or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SpaceError(file, where, f"`{kind}` takes {shape} numbers, got {show(args)}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SpaceError(file, where, f"`randint` takes integers [low, high], got {show(args)}")
    low, high = args[0], args[1]
    if not low < high:
        raise SpaceError(file, where, f"`{kind}` needs low < high, but got (low={low}, high={high})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(file, where, f"`loguniform` needs 0 < low < high, but got low={low}")
    if kind == "quniform" and not args[2] > 0:
        raise SpaceError(file, where, f"`quniform` needs q > 0, but got q={args[2]}")



def _walk_loc(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], list[str], Optional[str]]:
    """Follow ``loc`` through the model classes: (model holding the last field, field path, field name)."""
    model, path, field = root, [], None
    for part in loc:
        if field is not None:
            sub = model_of(model.model_fields[field].annotation)
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
    allowed = describe_type(info.annotation, info)
    if kind == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        if field == "wavelet" and isinstance(value, str):
            import pywt

            message += _suggest(value, pywt.wavelist(kind="discrete"))
        return where, message
    literals = [a for a in typing.get_args(unwrap_optional(info.annotation)) if isinstance(a, str)]
    if typing.get_origin(unwrap_optional(info.annotation)) is Union:
        literals = [a for arg in typing.get_args(info.annotation) if typing.get_origin(arg) is Literal
                    for a in typing.get_args(arg)]
    return where, f"must be {allowed}, but got {show(value)}{_suggest(value, literals) if literals else ''}"


def pydantic_error(file: str, root: type[BaseModel], error: ValidationError, prefix: str,
                    context: str = "") -> SpaceError:
    problems = [_explain(root, e, prefix) for e in error.errors()]
    (where, message), rest = problems[0], problems[1:]
    text = message + context
    if rest:
        text += "".join(f"\n  also {file}: {w}: {m}" for w, m in rest[:5])
        if len(rest) > 5:
            text += f"\n  ... and {len(rest) - 5} more"
    return SpaceError(file, where, text)



def _site_of(config: dict, base: dict, template: dict) -> str:
    """Which primitive's value made ``config`` differ from the base (for error context)."""
    for keys, kind, _ in kp.primitive_sites(template):
        value = kp.get_path(config, keys) if keys else config
        if value != (kp.get_path(base, keys) if keys else base):
            return f" (when {kp.dotted(keys)} takes its {kind} value {show(value)})"
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
            raise pydantic_error(file, TrialConfig, error, "trial", _site_of(config, base, spec.trial)) from None
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
                             f"is false) in every trial that sets it to {show(getattr(used[0], name))}; AuxT knobs "
                             "only act when AuxT is on: set model.auxt.enabled to true (or a grid with true), "
                             "or remove the key")


def _check_models(file: str, trials: list[TrialConfig]) -> None:
    """Backbone names against the registry; AuxT stages against the backbone's stage count."""
    from trainables.auxt.attach import (
        selected_stages,  # torch: imported when a space is checked, not at CLI start
    )
    from trainables.backbones import BACKBONES
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
    _check_backbone_options(file, trials, BACKBONES)
    built: set[str] = set()
    for trial in trials:
        model = trial.model
        key = model.model_dump_json()
        if (model.N is None and model.M is None) or key in built:
            continue  # registered default widths are tested with the registry
        built.add(key)
        _try_build(file, model)


def _check_backbone_options(file: str, trials: list[TrialConfig], backbones: dict) -> None:
    """Reject a backbone's own section (``model.llic``, ``model.msp``) set where no trial's backbone reads it."""
    for section in BACKBONE_OPTION_SECTIONS:
        default = getattr(ModelConfig(), section)
        setting = [t.model for t in trials if getattr(t.model, section) != default]
        if setting and not any(backbones[m.backbone].options == section for m in setting):
            readers = sorted(name for name, spec in backbones.items() if spec.options == section)
            raise SpaceError(file, f"trial.model.{section}", f"has no effect: only backbone(s) "
                             f"{', '.join(readers)} read model.{section}, but every trial that sets it uses "
                             f"{', '.join(sorted({m.backbone for m in setting}))}; set model.backbone to "
                             f"{readers[0]} or remove the section")


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
    from trainables.data.images import check_data_config
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
    check_training_data(file, [t.data for t in trials])  # image counts, crop_size against image sizes


def _check_search(file: str, spec: SearchSpec, trials: list[TrialConfig]) -> None:
    search, scheduler = spec.file.search, spec.file.scheduler
    check_search_setup(search, scheduler, spec.trial, spec.budget(), file)
    random_sites = [s for s in kp.primitive_sites(spec.template) if s[1] != "grid"]
    if search.num_samples > 1 and not random_sites:
        spec.warnings.append(f"search.num_samples is {search.num_samples} but nothing is random: each grid "
                             "point trains the same config num_samples times (vary schedule.seed to repeat runs)")



def _check_variants(file: str, spec: SearchSpec) -> None:
    """``search.baseline`` names a label of the space; no two labels of a site build the same model
    (a knob that does nothing, like A3's scaling, does not tell variants apart)."""
    baseline = spec.file.search.baseline
    labels = spec.variants.labels()
    if baseline is not None and baseline.label not in labels:
        allowed = ", ".join(repr(label) for label in labels) or "none: no grid/choice value has a `label`"
        raise SpaceError(file, "search.baseline.label", f"{baseline.label!r} is not a variant label of this space; "
                         f"labels: {allowed}")
    base = next(spec.configs())
    for site in spec.variants.sites:
        seen: dict[str, str] = {}
        for variant in site.variants:
            if variant.drawn:
                continue  # a primitive inside the variant: its models differ by draw
            config = kp.substitute(base, [(site.keys, {})])
            for key, value in dict(variant.fixed).items():
                kp.set_path(config, key, parse_param(value))
            dumped = TrialConfig.model_validate(config).model_dump(mode="json")
            recipe = repr(sorted(family_params(dumped).items()))
            if recipe in seen:
                raise SpaceError(file, kp.dotted(site.keys), f"variants {seen[recipe]!r} and {variant.label!r} "
                                 "build the same model (a knob that does nothing given the others, e.g. scaling "
                                 "without a DWT, does not tell them apart); drop one or change what it sets")
            seen[recipe] = variant.label


def check_spec(file: str, spec: SearchSpec, check_data: bool = True) -> None:
    """Every check after parsing: edge configs, resource splits, AuxT knobs, models, search setup, data folders."""
    trials = _check_trials(file, spec)
    _check_variants(file, spec)
    check_resources(file, spec.file.resources, trials)
    _check_auxt_knobs(file, trials)
    _check_models(file, trials)
    _check_search(file, spec, trials)
    check_ladder(file, spec)
    if check_data:
        _check_data(file, trials)
        check_warm_starts(file, trials)


def check_warm_starts(file: str, trials: list[TrialConfig], where: str = "trial.model.init_from") -> None:
    """Every ``model.init_from`` against the model it initialises (built once on the CPU), before Ray starts."""
    import torch

    from trainables.model import create_model
    from trainables.training.warm_start import WarmStartError, plan

    checked: set[str] = set()
    for trial in trials:
        model = trial.model
        key = model.model_dump_json()
        if not model.init_from or key in checked:
            continue
        checked.add(key)
        with torch.no_grad():
            state = create_model(model).state_dict()
        try:
            plan(state, model.init_from, model, model.init_from_partial)
        except WarmStartError as error:
            raise SpaceError(file, where, str(error).removeprefix("model.init_from: ")) from None
