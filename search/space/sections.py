"""The ``search`` and ``scheduler`` sections of a space file, and the checks that span sections.

The models are strict (unknown keys are errors). :func:`check_search_setup` checks what
one section alone cannot: combinations with the ``trial`` template (which keys are grids
or sampled) and with each other. ``search.space.load_space`` calls it, so every problem is
reported with the file and key path before Ray starts.

Why ``stratify_by``: the R-D loss ``λ·D + R`` (paper Eq. 6 without the OLP term) has a
different scale at each λ and for each distortion, so a low-rate trial always "beats" a
high-rate one. ASHA, PBT and the Optuna studies therefore compare a trial only with trials
whose values at the ``stratify_by`` keys (default ``loss.lmbda``, ``loss.distortion``) are
the same.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search.errors import SpaceError
from search.space.keypath import as_keys, dotted, get_path, primitive_sites
from trainables import metrics as M
from trainables.config import TrialConfig

#: Every metric a trial reports that a search may optimise (``eval/...`` and ``train/...``).
KNOWN_METRICS: tuple[str, ...] = tuple(sorted({
    value for name, value in vars(M).items()
    if name.isupper() and isinstance(value, str) and value.startswith(("eval/", "train/"))
}))

#: Metrics where larger is better.
MAXIMISED_METRICS: frozenset[str] = frozenset({M.EVAL_PSNR, M.EVAL_MS_SSIM, M.TRAIN_ITERS_PER_S})
#: Metrics where smaller is better: rate, distortion and every loss.
MINIMISED_METRICS: frozenset[str] = frozenset({
    M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_MSE, M.EVAL_ORTHO_LOSS, M.EVAL_DECODE_STEPS,
    M.TRAIN_LOSS, M.TRAIN_RD_LOSS, M.TRAIN_BPP, M.TRAIN_DISTORTION, M.TRAIN_ORTHO_LOSS, M.TRAIN_AUX_LOSS,
})
# The rest (energy shares, train/lr) are diagnostics with no better direction: a search on them names its mode.

DEFAULT_STRATIFY_BY: tuple[str, ...] = ("loss.lmbda", "loss.distortion")
DEFAULT_OBJECTIVES: tuple[str, ...] = (M.EVAL_BPP, M.EVAL_MSE)
#: Keys that set when a trial's learning rate decays (its budget, the decay shape, the decay points as
#: fractions of it, plateau's patience). ASHA compares trials at equal iterations, which is fair only
#: between trials that share them (a cosine trial has decayed half-way when a step trial has not begun).
BUDGET_KEYS: tuple[str, ...] = ("schedule.iterations", "schedule.decay", "schedule.milestones", "schedule.patience")

_CONTINUOUS = ("uniform", "loguniform")  # infinitely many values; quniform and randint give finite strata


def natural_mode(metric: str) -> Optional[Literal["min", "max"]]:
    """The direction in which ``metric`` gets better, or None for diagnostics that have none."""
    if metric in MAXIMISED_METRICS:
        return "max"
    return "min" if metric in MINIMISED_METRICS else None


def default_mode(metric: str) -> Literal["min", "max"]:
    """The natural direction of a metric: PSNR and MS-SSIM up, losses, bpp and MSE down."""
    return natural_mode(metric) or "min"


def check_mode(metric: str, mode: Optional[str], metric_key: str, mode_key: str = "mode") -> Literal["min", "max"]:
    """``mode`` for ``metric``: its natural direction when left out; an error when it contradicts it.

    ``metric_key`` is where the metric is set (``search.metric``), for the message."""
    natural = natural_mode(metric)
    if mode is None:
        if natural is None:
            raise ValueError(f"{metric_key} {metric} has no natural direction (a diagnostic, not a quality); "
                             f"set {mode_key} to min or max")
        return natural
    if natural is not None and mode != natural:
        better = "higher" if natural == "max" else "lower"
        raise ValueError(f"{mode} contradicts {metric_key} {metric} ({better} is better); "
                         f"use {natural} or leave {mode_key} out")
    return mode  # type: ignore[return-value]


def _check_metric(name: str, where: str) -> str:
    if name not in KNOWN_METRICS:
        raise ValueError(f"{where}: unknown metric {name!r}; allowed: {', '.join(KNOWN_METRICS)}")
    return name


def _trial_field(dotted: str) -> Optional[Any]:
    """The pydantic field of :class:`TrialConfig` at ``dotted`` (``loss.lmbda``), or None when there is none."""
    model: Any = TrialConfig
    field = None
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    return field


def trial_key_exists(dotted: str) -> bool:
    """Whether ``dotted`` names a leaf of :class:`TrialConfig` (``loss.lmbda``, ``schedule.lr``)."""
    field = _trial_field(dotted)
    return field is not None and not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))


def trial_default(dotted: str) -> Any:
    """The :class:`TrialConfig` default at ``dotted`` (None when it has none), for keys a space leaves out."""
    field = _trial_field(dotted)
    if field is None:
        return None
    default = field.get_default(call_default_factory=True)
    return None if type(default).__name__ == "PydanticUndefinedType" else default


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaselineConfig(_Strict):
    """The baseline variant: every other variant's rate saving is measured against it (Figure 8's reference)."""

    label: str = Field(..., min_length=1, description="The `label:` of a grid/choice variant of this space.")


class SearchAlgorithmConfig(_Strict):
    """How trial configs are proposed."""

    algorithm: Literal["random", "optuna"] = Field(
        "random",
        description="random: every grid point x num_samples random draws (Ray BasicVariantGenerator). "
        "optuna: one Optuna study per grid point, num_samples trials each, sampling the non-grid primitives; the "
        "studies live in Optuna's journal (optuna_journal.log in the experiment folder) or search.optuna_storage.",
    )
    sampler: Literal["tpe", "nsga2"] = Field(
        "tpe", description="Optuna sampler: tpe (single or multi-objective) or nsga2 (needs `objectives`)."
    )
    objectives: Optional[list[str]] = Field(
        None,
        description="Multi-objective Optuna search over these metrics, e.g. [eval/bpp, eval/mse] "
        "(a Pareto front over rate and distortion); null = single objective `metric`.",
    )
    modes: Optional[list[Literal["min", "max"]]] = Field(
        None, description="Direction of each objective; null = natural (bpp, mse: min; psnr, ms_ssim: max)."
    )
    startup_trials: Optional[int] = Field(
        None, ge=1,
        description="TPE: random trials per study before TPE (Optuna default 10); "
        "NSGA-II: population size (Optuna default 50).",
    )
    num_samples: int = Field(1, ge=1, description="Samples per grid point (Ray Tune num_samples).")
    max_concurrent: Optional[int] = Field(None, ge=1, description="At most this many trials at once.")
    metric: str = Field(M.DEFAULT_METRIC, description="Metric of the schedulers and of single-objective Optuna.")
    mode: Optional[Literal["min", "max"]] = Field(
        None, validate_default=True,
        description="Direction of `metric`; null = the metric's natural direction (rd_loss, bpp, mse, losses: "
        "min; psnr, ms_ssim: max). A mode that contradicts the metric is an error.",
    )
    seed: Optional[int] = None
    optuna_storage: Optional[str] = Field(
        None, description="Optuna storage of the studies: a database URL (sqlite:///..., postgresql://...) or a "
        "journal file path; null = optuna_journal.log in the experiment folder (`lic-search ui --optuna` shows it).",
    )
    baseline: Optional[BaselineConfig] = Field(
        None, description="The baseline variant `report` and `best --by family` measure BD-rates against, by its "
        "label (e.g. {label: baseline}); null = the AuxT-off family when there is exactly one.",
    )
    stratify_by: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STRATIFY_BY),
        description="Trial keys whose values must match for two trials to be compared "
        "(ASHA rungs, PBT quantiles, Optuna studies). R-D losses at different λ are not comparable.",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        return _check_metric(name, "metric")

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, names: Optional[list[str]]) -> Optional[list[str]]:
        if names is None:
            return names
        if len(names) < 2:
            raise ValueError(f"a multi-objective search needs at least two objectives, got {names}; "
                             "for one objective set `metric` instead")
        if len(set(names)) != len(names):
            raise ValueError(f"objectives must be distinct, got {names}")
        for name in names:
            _check_metric(name, "objectives")
        return names

    @field_validator("mode")
    @classmethod
    def _metric_direction(cls, mode: Optional[str], info: ValidationInfo) -> Optional[str]:
        metric = info.data.get("metric")
        if metric is None:  # the metric itself failed validation and is reported
            return mode
        return check_mode(metric, mode, "search.metric")

    @field_validator("modes")
    @classmethod
    def _objective_directions(cls, modes: Optional[list[str]], info: ValidationInfo) -> Optional[list[str]]:
        objectives = info.data.get("objectives")
        if modes is None or not objectives or len(modes) != len(objectives):
            return modes  # missing modes are natural; a count mismatch is reported by _consistent
        for index, (metric, mode) in enumerate(zip(objectives, modes)):
            check_mode(metric, mode, f"search.objectives[{index}]", "modes")
        return modes

    @field_validator("stratify_by")
    @classmethod
    def _trial_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not trial_key_exists(key):
                raise ValueError(f"stratify_by: {key!r} is not a trial config key "
                                 "(dotted path to a value, e.g. loss.lmbda, loss.distortion, schedule.iterations)")
        if len(set(keys)) != len(keys):
            raise ValueError(f"stratify_by keys must be distinct, got {keys}")
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> "SearchAlgorithmConfig":
        if self.modes is not None and self.objectives is None:
            raise ValueError("modes: only with objectives (multi-objective search); "
                             "a single objective takes `mode`")
        if self.objectives is not None and self.modes is not None and len(self.modes) != len(self.objectives):
            raise ValueError(f"modes: one per objective, got {len(self.modes)} modes for "
                             f"{len(self.objectives)} objectives {self.objectives}")
        if self.objectives is not None and self.algorithm != "optuna":
            raise ValueError("objectives: a multi-objective search needs algorithm optuna, "
                             f"got algorithm {self.algorithm!r}")
        if self.objectives is not None and self.modes is None:
            for index, metric in enumerate(self.objectives):
                if natural_mode(metric) is None:
                    raise ValueError(f"modes: objective {metric} (search.objectives[{index}]) has no natural "
                                     "direction; set `modes`, one min or max per objective")
        if self.sampler == "nsga2" and self.objectives is None:
            raise ValueError("sampler: nsga2 is a multi-objective sampler; set `objectives` "
                             "(e.g. [eval/bpp, eval/mse]) or use sampler tpe")
        return self

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None

    def objective_modes(self) -> list[str]:
        """Directions of the multi-objective metrics (explicit or natural)."""
        if self.objectives is None:
            return []
        return list(self.modes) if self.modes is not None else [default_mode(m) for m in self.objectives]


class PBTMutations(_Strict):
    """What PBT may change in ``schedule`` when a weak trial clones a strong one."""

    lr: Optional[tuple[float, float]] = Field(
        None, description="[low, high]: schedule.lr is resampled log-uniformly in it or multiplied by a "
        "perturbation factor and clipped to it.",
    )
    milestones: Optional[list[list[float]]] = Field(
        None, description="Candidate schedule.milestones (each a list of increasing fractions in (0, 1)); "
        "PBT moves to a neighbouring candidate or resamples one.",
    )
    gamma: Optional[list[float]] = Field(
        None, description="Candidate decay factors schedule.gamma, each in (0, 1].",
    )
    patience: Optional[list[int]] = Field(
        None, description="Candidate schedule.patience of decay-plateau trials (integers >= 1); PBT moves to a "
        "neighbouring candidate or resamples one. Trials of other decays keep none.",
    )
    min_lr: Optional[tuple[float, float]] = Field(
        None, description="[low, high]: schedule.min_lr of decay-cosine (and plateau) trials is resampled "
        "log-uniformly in it or multiplied by a perturbation factor and clipped to it; step trials keep none.",
    )

    @field_validator("lr")
    @classmethod
    def _lr_range(cls, bounds: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
        if bounds is not None:
            low, high = bounds
            if not 0 < low < high:
                raise ValueError(f"lr: `0 < low < high` must hold, but got (low={low}, high={high})")
        return bounds

    @field_validator("milestones")
    @classmethod
    def _milestone_lists(cls, candidates: Optional[list[list[float]]]) -> Optional[list[list[float]]]:
        if candidates is None:
            return None
        if len(candidates) < 2:
            raise ValueError(f"milestones: PBT needs at least two candidates to move between, got {candidates}")
        for values in candidates:
            if any(not 0.0 < v < 1.0 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"milestones: each candidate is a list of increasing fractions of the budget "
                                 f"in (0, 1), got {values}")
        return candidates

    @field_validator("gamma")
    @classmethod
    def _gammas(cls, values: Optional[list[float]]) -> Optional[list[float]]:
        if values is None:
            return None
        if len(values) < 2 or any(not 0.0 < v <= 1.0 for v in values):
            raise ValueError(f"gamma: at least two candidates in (0, 1], got {values}")
        return values

    @field_validator("patience")
    @classmethod
    def _patiences(cls, values: Optional[list[int]]) -> Optional[list[int]]:
        if values is not None and (len(set(values)) < 2 or any(v < 1 for v in values)):
            raise ValueError(f"patience: at least two candidates, integers >= 1, got {values}")
        return values

    @field_validator("min_lr")
    @classmethod
    def _min_lr_range(cls, bounds: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
        if bounds is not None and not 0 < bounds[0] < bounds[1]:
            raise ValueError(f"min_lr: `0 < low < high` must hold, but got (low={bounds[0]}, high={bounds[1]})")
        return bounds

    @model_validator(mode="after")
    def _something(self) -> "PBTMutations":
        if all(getattr(self, name) is None for name in PBTMutations.model_fields):
            raise ValueError("mutations: name at least one of lr, milestones, gamma, patience, min_lr for PBT "
                             "to change")
        return self


class PBTConfig(_Strict):
    """Population-based training of the learning-rate schedule (Jaderberg et al. 2017)."""

    perturbation_interval: int = Field(
        ..., ge=1, description="Iterations between exploit/explore steps (results come every eval_every)."
    )
    burn_in_period: int = Field(0, ge=0, description="Iterations before the first perturbation.")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="Bottom share that clones the top share.")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0)
    perturbation_factors: tuple[float, float] = Field((1.2, 0.8), description="Multipliers for schedule.lr.")
    mutations: PBTMutations

    @field_validator("perturbation_factors")
    @classmethod
    def _positive(cls, factors: tuple[float, float]) -> tuple[float, float]:
        if any(f <= 0 for f in factors):
            raise ValueError(f"perturbation_factors must be positive, got {factors}")
        return factors


class SchedulerConfig(_Strict):
    """When trials are stopped early (ASHA), mutated (PBT) or run to their budget (FIFO)."""

    type: Literal["asha", "fifo", "pbt"] = Field(
        "asha", description="asha: asynchronous successive halving per stratum; fifo: no early stopping; "
        "pbt: population-based schedule search per stratum.",
    )
    grace_period: int = Field(1, ge=1, description="ASHA: iterations before a trial may be stopped.")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA: keep the best 1/reduction_factor per rung.")
    brackets: int = Field(1, ge=1, description="ASHA: number of brackets.")
    max_t: Optional[int] = Field(
        None, ge=1, description="ASHA: the last rung's iteration; null = the space's largest budget."
    )
    pbt: Optional[PBTConfig] = Field(None, description="PBT settings; required with type pbt.")

    @model_validator(mode="after")
    def _pbt_section(self) -> "SchedulerConfig":
        if self.type == "pbt" and self.pbt is None:
            raise ValueError("pbt: type pbt needs a `pbt` section with perturbation_interval and mutations")
        if self.type != "pbt" and self.pbt is not None:
            raise ValueError(f"pbt: a `pbt` section only goes with type pbt, got type {self.type!r}")
        if self.max_t is not None and self.max_t < self.grace_period:
            raise ValueError(f"max_t: must be at least grace_period ({self.grace_period}), got {self.max_t}")
        return self


# --------------------------------------------------------------------------- cross-section checks
def template_primitives(template: Any) -> Iterator[tuple[str, str]]:
    """(dotted key, primitive kind) of every sampling primitive in a ``trial`` template."""
    for keys, kind, _ in primitive_sites(template):
        yield dotted(keys, prefix=""), kind


def varies(trial: dict, key: str) -> bool:
    """Whether trials of the ``trial`` template can differ at ``key`` (a primitive at it or above it)."""
    keys = as_keys(key)
    for site, kind, args in primitive_sites(trial):
        if site != keys[:len(site)]:
            continue
        rest = keys[len(site):]
        if kind not in ("grid", "choice"):
            return not rest  # a range at the key itself
        values = [get_path(value, rest) if rest else value for value in args]
        values = [trial_default(key) if value is None else value for value in values]
        if len({json.dumps(value, sort_keys=True) for value in values}) > 1:
            return True
    return False


def budget_strata(search: SearchAlgorithmConfig, scheduler: SchedulerConfig, trial: dict) -> list[str]:
    """The :data:`BUDGET_KEYS` that vary in the space and that ASHA must add to ``stratify_by``."""
    if scheduler.type != "asha":
        return []
    return [key for key in BUDGET_KEYS if key not in search.stratify_by and varies(trial, key)]


def stratify_keys(search: SearchAlgorithmConfig, scheduler: SchedulerConfig, trial: dict) -> list[str]:
    """The keys that define a stratum: ``search.stratify_by`` plus, under ASHA, the varying budget keys."""
    return list(search.stratify_by) + budget_strata(search, scheduler, trial)


class SetupError(ValueError):
    """A combination of sections that cannot work; ``key_path`` is where to fix it."""

    def __init__(self, key_path: str, message: str):
        self.key_path = key_path
        super().__init__(message)


def check_search_setup(search: SearchAlgorithmConfig, scheduler: SchedulerConfig, trial: dict,
                       budget: int, file: str = "<space>") -> None:
    """Raise :class:`search.errors.SpaceError` (file, key path, rule) for combinations that cannot work.

    ``budget`` is the largest ``schedule.iterations`` a trial can get. Call before Ray starts.
    """

    try:
        _check(search, scheduler, trial, budget)
    except SetupError as error:
        raise SpaceError(file, error.key_path, str(error)) from None


def _check(search: SearchAlgorithmConfig, scheduler: SchedulerConfig, trial: dict, budget: int) -> None:
    primitives = dict(template_primitives(trial))
    sampled = {key: kind for key, kind in primitives.items() if kind != "grid"}
    if search.algorithm == "optuna":
        if not sampled:
            raise SetupError("search.algorithm", "optuna needs at least one sampled primitive "
                             "(choice, uniform, loguniform, randint, quniform) in `trial`; grids are "
                             "enumerated (one Optuna study per grid point). With grids only, use algorithm random")
        if not search.multi_objective:
            for key in search.stratify_by:
                if key in sampled:
                    raise SetupError(f"trial.{key}", f"optuna compares {search.metric} across trials, which "
                                     f"is not comparable across different {key}; give {key} as a fixed value "
                                     f"or a `grid` (one study per value), not `{sampled[key]}`, or set "
                                     "search.objectives for a multi-objective (bpp, distortion) search")
    if scheduler.type == "pbt" and search.algorithm != "random":
        raise SetupError("scheduler.type", "pbt changes trial configs itself and cannot be combined with "
                         f"search.algorithm {search.algorithm!r}; use algorithm random")
    if scheduler.type in ("asha", "pbt"):
        for key in search.stratify_by:
            if primitives.get(key) in _CONTINUOUS:
                raise SetupError(f"trial.{key}", f"scheduler {scheduler.type} compares trials only at equal "
                                 f"{key} (search.stratify_by), so a continuous `{primitives[key]}` leaves every "
                                 "trial alone in its stratum; use a grid or choice, or scheduler fifo")
    if scheduler.type == "asha":
        max_t = scheduler.max_t or budget
        if scheduler.grace_period > max_t:
            where = "scheduler.grace_period"
            raise SetupError(where, f"must not exceed the iteration budget ({max_t}), got {scheduler.grace_period}")
    if scheduler.type == "pbt" and scheduler.pbt is not None:
        pbt = scheduler.pbt
        if max(pbt.perturbation_interval, pbt.burn_in_period) >= budget:
            raise SetupError("scheduler.pbt.perturbation_interval",
                             f"PBT never perturbs before the budget ends: perturbation_interval "
                             f"({pbt.perturbation_interval}) and burn_in_period ({pbt.burn_in_period}) must "
                             f"stay below the iteration budget ({budget})")


def describe_setup(search: SearchAlgorithmConfig, scheduler: SchedulerConfig, budget: int,
                   trial: Optional[dict] = None) -> list[str]:
    """The ``search`` and ``scheduler`` lines of ``lic-search validate`` (``trial``: the template, for strata)."""
    if search.multi_objective:
        source = "set in the space" if "modes" in search.model_fields_set else "the metrics' natural directions"
        goal = ("objectives " + ", ".join(f"{m} {d}" for m, d in zip(search.objectives or [], search.objective_modes()))
                + f" ({source})")
    else:
        better = "higher" if search.mode == "max" else "lower"
        source = "set in the space" if "mode" in search.model_fields_set else "the metric's natural direction"
        goal = f"metric {search.metric}, mode {search.mode} ({better} is better; {source})"
    algorithm = f"optuna {search.sampler}, one study per grid point" if search.algorithm == "optuna" else "random"
    added = budget_strata(search, scheduler, trial) if trial is not None else []
    keys = list(search.stratify_by) + added
    strata = (f"trials are compared only at equal {', '.join(keys)}" if keys
              else "none (every trial is compared with every other)")
    if added:
        strata += (f" ({', '.join(added)} added to search.stratify_by: {'they vary' if len(added) > 1 else 'it varies'}"
                   " in this space, and ASHA compares trials at equal iterations, which is fair only at equal "
                   "budget and learning-rate decay points)")
    lines = [
        f"search: {algorithm}; num_samples {search.num_samples}, max_concurrent {search.max_concurrent or 'unlimited'}, "
        f"{goal}, seed {search.seed}",
        f"strata: {strata}",
    ]
    if scheduler.type == "asha":
        lines.append(f"scheduler: asha per stratum, grace_period {scheduler.grace_period}, reduction_factor "
                     f"{scheduler.reduction_factor:g}, brackets {scheduler.brackets}, max_t {scheduler.max_t or budget}; "
                     "rungs persist across resume")
    elif scheduler.type == "pbt" and scheduler.pbt is not None:
        pbt = scheduler.pbt
        mutations = pbt.mutations.model_dump(exclude_none=True)
        lines.append(f"scheduler: pbt per stratum, every {pbt.perturbation_interval} iterations (burn-in "
                     f"{pbt.burn_in_period}), the bottom {pbt.quantile_fraction:g} clones the top; mutates "
                     + "; ".join(f"schedule.{k} {v}" for k, v in mutations.items()))
    else:
        lines.append("scheduler: fifo (every trial runs its full budget)")
    return lines
