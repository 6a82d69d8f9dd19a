"""Search-space files: YAML -> validated :class:`SearchSpec` -> Ray Tune ``param_space``.

A space file has a ``trial`` section shaped like :class:`trainables.config.TrialConfig`
in which any leaf may be a sampling primitive, a one-key mapping:

``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [low, high]}``,
``{loguniform: [low, high]}``, ``{randint: [low, high]}`` (high exclusive),
``{quniform: [low, high, q]}``.

Everything is checked before Ray starts: the YAML is loaded with ``safe_load``; every
value a primitive can produce at its edges is validated against ``TrialConfig``; data
folders must exist and hold images. Errors name the file, the key path and the rule.
Relative data paths are resolved against the space file's folder.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.errors import SpaceError
from trainables.config import TrialConfig
from trainables.metrics import DEFAULT_METRIC, DEFAULT_MODE

PRIMITIVES = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchAlgorithmConfig(_Strict):
    algorithm: Literal["random", "optuna"] = Field(
        "random", description="random: grid and random sampling; optuna: TPE over the non-grid primitives."
    )
    num_samples: int = Field(1, ge=1, description="Samples per grid point (Ray Tune num_samples).")
    max_concurrent: Optional[int] = Field(None, ge=1, description="At most this many trials at once.")
    metric: str = DEFAULT_METRIC
    mode: Literal["min", "max"] = DEFAULT_MODE
    seed: Optional[int] = None


class SchedulerConfig(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="Iterations before ASHA may stop a trial.")
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)


class ResourcesConfig(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_failures: int = Field(2, ge=0, description="Retries of a crashed trial from its last checkpoint.")


class SpaceFile(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="Search name: MLflow experiment and folder.")
    description: str = ""
    trial: dict[str, Any]
    search: SearchAlgorithmConfig = Field(default_factory=SearchAlgorithmConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)


class SearchSpec:
    """A validated space: what the tuner needs, and the resolved template for display."""

    def __init__(self, path: Path, file: SpaceFile):
        self.path = path
        self.file = file

    @property
    def name(self) -> str:
        return self.file.name

    def param_space(self) -> dict:
        """The trial template with primitives turned into Ray Tune domains."""
        from ray import tune

        def to_domain(node: Any) -> Any:
            primitive = _primitive(node)
            if primitive is None:
                if isinstance(node, dict):
                    return {k: to_domain(v) for k, v in node.items()}
                return node
            kind, args = primitive
            if kind == "grid":
                return tune.grid_search(list(args))
            if kind == "choice":
                return tune.choice(list(args))
            if kind == "uniform":
                return tune.uniform(*args)
            if kind == "loguniform":
                return tune.loguniform(*args)
            if kind == "randint":
                return tune.randint(*args)
            return tune.quniform(*args)

        return to_domain(self.file.trial)

    def grid_size(self) -> int:
        return math.prod(len(args) for kind, args in _walk_primitives(self.file.trial) if kind == "grid")

    def trial_count(self) -> int:
        return self.grid_size() * self.file.search.num_samples

    def budget(self) -> int:
        """The largest iteration budget any trial can get (ASHA's max_t)."""
        return max(int(c["schedule"]["iterations"]) for c in _edge_configs(self.file.trial))


def _primitive(node: Any) -> Optional[tuple[str, list]]:
    if isinstance(node, dict) and len(node) == 1:
        (key, value), = node.items()
        if key in PRIMITIVES:
            return key, value
    return None


def _walk_primitives(node: Any, path: str = "") -> Iterator[tuple[str, list]]:
    primitive = _primitive(node)
    if primitive is not None:
        yield primitive
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_primitives(value, f"{path}.{key}" if path else key)


def _check_primitive(file: str, path: str, kind: str, args: Any) -> None:
    where = f"trial.{path}"
    if not isinstance(args, list):
        raise SpaceError(file, where, f"`{kind}` takes a list, got {args!r}")
    if kind in ("grid", "choice"):
        if not args:
            raise SpaceError(file, where, f"`{kind}` needs at least one value, got an empty list")
        return
    expected = 3 if kind == "quniform" else 2
    if len(args) != expected or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
        raise SpaceError(file, where, f"`{kind}` takes {shape} numbers, got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise SpaceError(file, where, f"`{kind}` needs low < high, but got (low={low}, high={high})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(file, where, f"`loguniform` needs low > 0, but got low={low}")


def _edge_values(kind: str, args: list) -> list:
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    return [args[0], args[1]]


def _edge_configs(template: Any) -> Iterator[dict]:
    """Configs that put every primitive at each of its edge values (product, capped)."""
    sites: list[tuple[list[str], list]] = []

    def collect(node: Any, keys: list[str]) -> None:
        primitive = _primitive(node)
        if primitive is not None:
            sites.append((keys, _edge_values(*primitive)))
        elif isinstance(node, dict):
            for key, value in node.items():
                collect(value, keys + [key])

    collect(template, [])
    for count, combo in enumerate(itertools.product(*(values for _, values in sites))):
        if count >= 256:
            return
        config = copy.deepcopy(template)
        for (keys, _), value in zip(sites, combo):
            node = config
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = value
        yield config


def _format_pydantic(file: str, error: ValidationError, prefix: str) -> SpaceError:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    if first["type"] == "literal_error":
        message = f"{message} (got {first.get('input')!r})"
    return SpaceError(file, f"{prefix}{path}" if path else prefix.rstrip("."), message)


def _resolve_paths(trial: dict, base: Path) -> None:
    data = trial.get("data")
    if isinstance(data, dict):
        for key in ("train", "eval"):
            value = data.get(key)
            if isinstance(value, str) and _primitive(value) is None:
                data[key] = str((base / value).resolve()) if not Path(value).is_absolute() else value


def load_space(path: str | Path, check_data: bool = True) -> SearchSpec:
    """Read, validate and resolve a space file; raise :class:`SpaceError` on any problem."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise SpaceError(file, "", "file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpaceError(file, "", f"invalid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict):
        raise SpaceError(file, "", f"a space file is a mapping with keys name, trial, ...; got {type(raw).__name__}")
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise _format_pydantic(file, error, "") from None
    _resolve_paths(space.trial, path.parent)

    def check(node: Any, keys: str) -> None:
        primitive = _primitive(node)
        if primitive is not None:
            _check_primitive(file, keys, *primitive)
        elif isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{keys}.{key}" if keys else key)

    check(space.trial, "")
    for config in _edge_configs(space.trial):
        try:
            trial = TrialConfig.model_validate(config)
        except ValidationError as error:
            raise _format_pydantic(file, error, "trial.") from None
    if check_data:
        from trainables.data import check_data_config
        from trainables.errors import DataError

        for config in _edge_configs(space.trial):
            trial = TrialConfig.model_validate(config)
            try:
                check_data_config(trial.data)
            except DataError as error:
                raise SpaceError(file, "trial.data", str(error)) from None
            break
    if space.scheduler.type == "asha" and space.scheduler.grace_period > SearchSpec(path, space).budget():
        raise SpaceError(file, "scheduler.grace_period",
                         f"must not exceed the iteration budget ({SearchSpec(path, space).budget()}), "
                         f"got {space.scheduler.grace_period}")
    return SearchSpec(path.resolve(), space)
