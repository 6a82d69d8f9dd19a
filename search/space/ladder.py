"""Rate ladders: a space's rate points trained as a ladder (the ``ladder:`` section).

A *rate family* is the set of trials equal but for their rate point (the stratify keys that
vary: ``loss.lmbda`` and, when it varies, ``loss.distortion`` or an ASHA budget key). In a
ladder, each family's *start point* (``ladder.start``) is trained first, as the space says; every
other rate point of the family then starts from the start point's final weights (``model.init_from``)
with the ``fine_tune`` overrides (a shorter budget, a lower learning rate). CompressAI
trained its zoo this way (highest quality first, then fine-tuned down; CompressAI #310).

This module is the arithmetic of a ladder, without Ray: which keys are rate keys, the start-point
and fine-tune sub-spaces, and the fine-tune config of one rate point of one family. The
phases themselves run in :mod:`search.tuning.ladder`.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Iterator

from search.errors import SpaceError
from search.space import keypath as kp
from search.space.describe import show
from search.space.files import LadderConfig, SpaceFile
from search.space.sections import check_search_setup, trial_key_exists, varies
from search.space.spec import SearchSpec

INIT_FROM = ("model", "init_from")
SCHEDULERS = ("asha", "fifo")  # PBT clones weights across trials itself: a ladder on top is not defined


def _grid_values(spec: SearchSpec, key: str) -> list:
    """The grid values at a rate key (validated by :func:`check_ladder` to be a plain grid there)."""
    node = kp.get_path(spec.file.trial, key)
    primitive = kp.primitive(node)
    return list(primitive[1]) if primitive and primitive[0] == "grid" else []


def rate_keys(spec: SearchSpec) -> list[str]:
    """The stratify keys a grid varies: together, their values are a trial's rate point."""
    return [key for key in spec.stratify_by() if varies(spec.file.trial, key)]


def rate_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every rate point of a family, the start point first: {dotted rate key: value}."""
    keys = rate_keys(spec)
    points = [dict(zip(keys, values)) for values in itertools.product(*(_grid_values(spec, k) for k in keys))]
    start = _ladder(spec).start
    return sorted(points, key=lambda point: point != start)


def _ladder(spec: SearchSpec) -> LadderConfig:
    if spec.file.ladder is None:
        raise ValueError(f"space {spec.name!r} has no ladder section")
    return spec.file.ladder


def _derived(spec: SearchSpec, trial: dict) -> SearchSpec:
    """A sub-space of ``spec`` with another trial template and no ladder (same search, scheduler, resources,
    variant labels: ``trial`` is derived from the template without labels, the labels name its trials)."""
    file: SpaceFile = spec.file.model_copy(update={"trial": trial, "ladder": None})
    return SearchSpec(spec.path, file, spec.variants, trial)


def start_spec(spec: SearchSpec) -> SearchSpec:
    """The first phase: the space with each rate key fixed at the start point's value."""
    trial = copy.deepcopy(spec.trial)  # without the variants' labels
    for key, value in _ladder(spec).start.items():
        kp.set_path(trial, key, value)
    return _derived(spec, trial)


def fine_tune_spec(spec: SearchSpec) -> SearchSpec:
    """The second phase as a space: the other rate points with the ``fine_tune`` overrides.

    Its trials stand for the fine-tuned trials of the families (what the scheduler of the phase,
    ``estimate`` and validation need); the phase itself trains the start points' exact configs."""
    ladder = _ladder(spec)
    trial = copy.deepcopy(spec.trial)  # without the variants' labels
    for key in rate_keys(spec):
        others = [value for value in _grid_values(spec, key) if value != ladder.start[key]]
        kp.set_path(trial, key, {"grid": others} if len(others) > 1 else others[0] if others else ladder.start[key])
    for key, value in ladder.fine_tune.items():
        kp.set_path(trial, key, copy.deepcopy(value))
    derived = _derived(spec, trial)
    derived.file = derived.file.model_copy(update={"search": spec.file.search.model_copy(
        update={"algorithm": "random"})})
    return derived


def fine_tune_configs(spec: SearchSpec, start_config: dict, checkpoint: str) -> Iterator[dict]:
    """Each other rate point of the start point's family: its config, starting from ``checkpoint``."""
    ladder = _ladder(spec)
    for point in rate_points(spec)[1:]:
        config = copy.deepcopy(start_config)
        for key, value in {**point, **ladder.fine_tune}.items():
            kp.set_path(config, key, copy.deepcopy(value))
        kp.set_path(config, INIT_FROM, checkpoint)
        config["model"].pop("init_from_partial", None)  # the start point's own architecture: every key matches
        yield config


def check_ladder(file: str, spec: SearchSpec) -> None:
    """The ladder section against the space, before Ray starts; :class:`SpaceError` at its key path."""
    ladder = spec.file.ladder
    if ladder is None:
        return
    if spec.file.scheduler.type not in SCHEDULERS:
        raise SpaceError(file, "ladder", f"a ladder runs with scheduler type {' or '.join(SCHEDULERS)}, not "
                         f"{spec.file.scheduler.type!r} (PBT already starts trials from other trials' weights)")
    keys = rate_keys(spec)
    if not keys:
        raise SpaceError(file, "ladder.start", "a ladder needs several rate points, but no rate key varies: make "
                         f"one of {', '.join('trial.' + k for k in spec.stratify_by())} a grid")
    if set(ladder.start) != set(keys):
        raise SpaceError(file, "ladder.start", f"must give a value for each rate key that varies "
                         f"({', '.join(keys)}) and nothing else, got {', '.join(ladder.start)}")
    for key in keys:
        values = _grid_values(spec, key)
        if not values:
            raise SpaceError(file, f"trial.{key}", "in a ladder the rate points are a grid (each family trains "
                             f"every one of them), got {show(kp.get_path(spec.file.trial, key))}")
        if ladder.start[key] not in values:
            raise SpaceError(file, f"ladder.start.{key}", f"must be one of the grid values {show(values)}, got "
                             f"{show(ladder.start[key])}")
    for key, value in ladder.fine_tune.items():
        where = f"ladder.fine_tune.{key}"
        if not trial_key_exists(key):
            raise SpaceError(file, where, "not a trial key (dotted, e.g. schedule.iterations or schedule.lr)")
        if key in keys or key.startswith("model."):
            raise SpaceError(file, where, "a fine-tune keeps the start point's rate family and model: it may set "
                             "schedule, data, loss (not the rate keys) and performance keys")
        if kp.primitive(value) is not None or isinstance(value, dict):
            raise SpaceError(file, where, f"takes a plain value, got {show(value)}")
    _check_fine_tune_phase(file, spec)


def _check_fine_tune_phase(file: str, spec: SearchSpec) -> None:
    """Every fine-tune config is a valid trial, and the search setup fits the fine-tune budget."""
    from pydantic import ValidationError

    from trainables.config import TrialConfig

    phase = fine_tune_spec(spec)
    settle = spec.file.ladder.settle
    for config in phase.configs():
        try:
            schedule = TrialConfig.model_validate(config).schedule
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(map(str, problem["loc"]))
            raise SpaceError(file, "ladder.fine_tune", f"a fine-tuned trial would be invalid at trial.{where}: "
                             f"{problem['msg']}") from None
        evaluations = schedule.iterations // min(schedule.eval_every, schedule.iterations)
        if settle is not None and evaluations < settle.evaluations:
            raise SpaceError(file, "ladder.settle.evaluations", f"a fine-tune of {schedule.iterations} iterations "
                             f"evaluates {evaluations} time(s) (every {schedule.eval_every}), so it could never "
                             f"see {settle.evaluations} evaluations settle: lower it, or raise the fine-tune's "
                             "schedule.iterations or lower its schedule.eval_every in ladder.fine_tune")
    try:
        check_search_setup(phase.file.search, phase.file.scheduler, phase.file.trial, phase.budget(), file)
    except SpaceError as error:
        raise SpaceError(file, error.key_path, f"{str(error).split(': ', 2)[-1]} (in the fine-tune phase, "
                         f"whose budget is {phase.budget()} iterations: see ladder.fine_tune)") from None


__all__ = ["rate_keys", "rate_points", "start_spec", "fine_tune_spec", "fine_tune_configs", "check_ladder"]
