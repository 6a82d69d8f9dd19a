"""Text about spaces: values in YAML flow style, field types, ``validate``'s summary and ``--keys``."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel

from search.space import keypath as kp
from search.space.files import SpaceFile
from search.space.sections import describe_setup
from trainables.config import TrialConfig

if TYPE_CHECKING:
    from search.space.spec import SearchSpec


def show(value: Any) -> str:
    """A value as it would be written in YAML flow style."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("...").strip()


def show_primitive(kind: str, args: list) -> str:
    return f"{kind} {show(list(args))}"



def unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def model_of(annotation: Any) -> Optional[type[BaseModel]]:
    annotation = unwrap_optional(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None



def describe_type(annotation: Any, info: Any = None) -> str:
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
        return "one of " + ", ".join(show(a) for a in args)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = " or ".join(describe_type(a) for a in members)
        return f"{text}{bounds} or null" if type(None) in args else text
    if origin is tuple:
        kinds = {describe_type(a) for a in args if a is not Ellipsis}
        return f"a list of {len(args)} {'numbers' if kinds == {'a number'} else 'values'}"
    if origin is list:
        if not args:
            return "a list"
        item = describe_type(args[0])
        if item.startswith(("an ", "a ")):  # "an integer" -> "a list of integers"; "one of a, b" stays as it is
            return f"a list of {item.split(' ', 1)[1]}s"
        return f"a list, each {item}"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a folder path"}
    if annotation in names:
        return names[annotation] + bounds
    model = model_of(annotation)
    if model is not None:
        return "a mapping with keys " + ", ".join(model.model_fields)
    return getattr(annotation, "__name__", str(annotation))



def _render(node: Any, indent: int = 2) -> list[str]:
    pad = " " * indent
    lines = []
    for key, value in node.items():
        primitive = kp.primitive(value)
        if primitive is not None and primitive[0] == "grid" and any(isinstance(v, dict) for v in primitive[1]):
            lines.append(f"{pad}{key}: grid of {len(primitive[1])}:")
            lines.extend(f"{pad}  - {show(v)}" for v in primitive[1])
        elif primitive is not None:
            lines.append(f"{pad}{key}: {show_primitive(*primitive)}")
        elif isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(_render(value, indent + 2))
        else:
            lines.append(f"{pad}{key}: {show(value)}")
    return lines


def _overlay(full: Any, template: Any) -> Any:
    """The template's primitives laid over a fully defaulted config."""
    if kp.primitive(template) is not None or not isinstance(template, dict) or not isinstance(full, dict):
        return template
    merged = dict(full)
    for key, value in template.items():
        merged[key] = _overlay(full.get(key), value)
    return merged


def describe_spec(spec: SearchSpec) -> str:
    file = spec.file
    base = TrialConfig.model_validate(next(spec.configs())).model_dump(mode="json")
    lines = [f"space: {spec.path}", f"name: {file.name}"]
    if file.description:
        lines.append(f"description: {file.description}")
    lines.append("trial (every key, defaults filled in):")
    lines.extend(_render(_overlay(base, spec.trial)))
    sites = kp.primitive_sites(spec.template)
    grids = [f"{kp.dotted(k, '')} ({len(a)})" for k, kind, a in sites if kind == "grid"]
    lines.append("")
    if spec.collapse_note:
        lines.append(spec.collapse_note)
    lines.append(f"grid: {' x '.join(grids) if grids else 'none'} = {spec.grid_size()} point(s)")
    for site in spec.variants.sites:
        lines.append(f"variants at {kp.dotted(site.keys, '')}: " + ", ".join(v.label for v in site.variants)
                     + (f" (baseline: {spec.baseline_label()})" if spec.baseline_label() else ""))
    lines.append(f"trials: {spec.grid_size()} grid point(s) x {file.search.num_samples} sample(s) = "
                 f"{spec.trial_count()}")
    budgets = sorted({(c["schedule"]["iterations"], tuple(c["schedule"].get("milestones", ())))
                      for c in (TrialConfig.model_validate(c).model_dump(mode="json") for c in spec.configs())})
    shown = []
    for iterations, milestones in budgets:
        decay = ", ".join(str(int(round(m * iterations))) for m in milestones)
        shown.append(f"{iterations}" + (f" (lr decay at {decay})" if decay else ""))
    lines.append(f"iteration budget: {spec.budget()} (max); per trial: {'; '.join(shown)}")
    lines.extend(describe_setup(file.search, file.scheduler, spec.budget(), spec.trial))
    if file.ladder is not None:
        start = ", ".join(f"{k}={show(v)}" for k, v in file.ladder.start.items())
        tuned = ", ".join(f"{k}={show(v)}" for k, v in file.ladder.fine_tune.items()) or "nothing changed"
        lines.append(f"ladder: per rate family, the start point {start} from scratch first; every other rate point "
                     f"then fine-tuned from its final weights with {tuned}")
        settle = file.ladder.settle
        if settle is not None:
            lines.append(f"ladder settle: a fine-tune ends once eval/bpp and eval/rd_loss of its last "
                         f"{settle.evaluations} evaluations lie within {settle.tolerance:g}% of the latest (its "
                         "schedule.iterations is the cap)")
    r = file.resources
    workers = "" if r.workers_per_trial == 1 else (f" over {r.workers_per_trial} data-parallel workers "
                                                   f"({r.gpus_per_trial / r.workers_per_trial:g} GPU each)")
    lines.append(f"resources: {r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU per trial{workers}; "
                 f"{r.max_failures} retries from checkpoint")
    lines.extend(f"warning: {w}" for w in spec.warnings)
    return "\n".join(lines)


def describe_schema() -> str:
    """Every key of a space file with its type, default and description (``lic-search validate --keys``)."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            dotted = f"{prefix}{name}"
            sub = model_of(info.annotation)
            if name == "trial" and model is SpaceFile:
                lines.append(f"{dotted}: {info.description}")
                walk(TrialConfig, "trial.")
                continue
            if sub is not None:
                lines.append(f"{dotted}: {(sub.__doc__ or '').strip().splitlines()[0] if sub.__doc__ else ''}")
                walk(sub, dotted + ".")
                continue
            default = "required" if info.is_required() else f"default {show(info.get_default(call_default_factory=True))}"
            about = f" {info.description}" if info.description else ""
            lines.append(f"{dotted}: {describe_type(info.annotation, info)}; {default}.{about}")

    walk(SpaceFile, "")
    return "\n".join(lines)



def budget_notes(configs) -> list[str]:
    """What the trial config quietly adjusts, said out loud: ``eval_every`` above ``iterations`` is lowered
    to the budget (each such trial evaluates and checkpoints at its last iteration only)."""
    from trainables.config import ScheduleConfig

    default = ScheduleConfig.model_fields["eval_every"].default
    pairs: dict[tuple[int, int, bool], None] = {}
    for config in configs:
        schedule = config.get("schedule") or {}
        given = "eval_every" in schedule
        every, budget = schedule.get("eval_every", default), schedule.get("iterations")
        if isinstance(every, int) and isinstance(budget, int) and every > budget:
            pairs[(every, budget, given)] = None
    return [f"note: trial.schedule.eval_every {every}{'' if given else ' (the default)'} is above "
            f"trial.schedule.iterations {budget}: such trials evaluate and checkpoint only at iteration {budget} "
            f"(eval_every is lowered to {budget})" for every, budget, given in pairs]
