"""What a search will cost before it is launched: the arithmetic of ``lic-search estimate``.

Pure functions only (no timing, no Ray): :func:`plan_trials` turns a validated space into
the trials Ray Tune will run (every grid point × ``num_samples``; non-grid primitives drawn
with the search seed), and :func:`estimate` turns those trials plus the measured
:class:`StepCost` of each distinct step configuration (per iteration, per evaluation with its
checkpoint, once at start-up) and the search's launch time into device-hours and wall time.

A trial with a ``data.crop_schedule`` runs one step configuration per stage (larger crops,
other batch sizes later): its cost is each stage's iterations at that stage's time per
iteration, the stages starting where training starts them (``round(at · iterations)``, see
:class:`trainables.data.crop_schedule.CropPlan`), so a trial stopped early paid only for the
stages before its stop:

* **grid**: every trial runs its whole budget (FIFO and PBT searches; also the hard upper
  bound of any ASHA search).
* **ASHA**: per stratum, ``ceil(n / η)`` of the ``n`` trials that reach a rung pass it, as in
  synchronous successive halving; the survivors are taken to be the most expensive trials,
  and a stopped trial runs to the first evaluation at or after its rung (ASHA only sees
  reported results). An asynchronous run can let a few more trials through when later
  trials beat earlier ones, so this is the budget of the schedule, not a worst case.
* **wall time** on ``gpus`` devices: trials per device from ``gpus_per_trial``, a packed
  trial assumed to get its share of the device (no speed-up from packing), longest trials
  scheduled first.
"""

from __future__ import annotations

import copy
import functools
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

from search.space import SearchSpec
from search.space import keypath as kp
from search.space.primitives import KINDS
from search.space.strata import stratum_of
from trainables.config import TrialConfig

__all__ = ["StepConfig", "StepCost", "Stage", "TrialPlan", "RungCount", "Estimate", "step_config", "plan_trials",
           "plan_configs", "plan_ladder", "asha_rungs",
           "asha_iterations", "trials_per_device", "wall_hours", "estimate"]

# AuxT knobs that change a loss weight or an initial value, not the work of a step.
_COST_FREE_AUXT_KEYS = ("lambda_orth", "scaling_init", "ortho_norm")


@dataclass(frozen=True, order=True)
class StepConfig:
    """Everything that sets the time of one training step (model, batch, crop, precision)."""

    backbone: str
    N: Optional[int]
    M: Optional[int]
    auxt: str  # "off" or the cost-relevant AuxT knobs, e.g. "on(placement=both, wavelet=haar, ...)"
    batch_size: int
    crop_size: int
    amp: str
    channels_last: bool
    compile: bool
    model: str = ""  # what else of the built model sets the step (:func:`model_key`): its size and own knobs

    def label(self) -> str:
        widths = "" if self.N is None and self.M is None else f" N={self.N} M={self.M}"
        extras = "".join(f", {name}" for name, on in (("channels_last", self.channels_last),
                                                       ("compile", self.compile)) if on)
        return (f"{self.backbone}{widths}{f' ({self.model})' if self.model else ''}, AuxT {self.auxt}, "
                f"batch {self.batch_size}, crop {self.crop_size}, amp {self.amp}{extras}")


@dataclass(frozen=True)
class StepCost:
    """What a trial pays, measured per step configuration (:mod:`search.analysis.step_timing`).

    A trial is more than its steps: each evaluation (on the space's eval set, at ``eval_every``)
    with the checkpoint saved after it, and building the trainer (model, data index, eval images)
    plus the first steps' extra time before it runs at speed. Leaving them out made the estimate of
    a small ablation 1.9x too low."""

    iteration: float  # seconds per training step
    evaluation: float = 0.0  # seconds per evaluation, its checkpoint included
    startup: float = 0.0  # seconds once per trial


def cost_of(value: "StepCost | float") -> StepCost:
    """A bare number is seconds per iteration (no evaluation or start-up cost measured)."""
    return value if isinstance(value, StepCost) else StepCost(float(value))


def step_config(config: TrialConfig) -> StepConfig:
    """The :class:`StepConfig` of a validated trial config."""
    auxt = config.model.auxt
    if auxt.enabled:
        knobs = auxt.model_dump(mode="json", exclude={"enabled", *_COST_FREE_AUXT_KEYS})
        defaults = type(auxt)(enabled=True).model_dump(mode="json", exclude={"enabled", *_COST_FREE_AUXT_KEYS})
        changed = {k: v for k, v in knobs.items() if v != defaults[k]}
        auxt_text = "on" + (f" ({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else "")
    else:
        auxt_text = "off"
    perf = config.performance
    return StepConfig(config.model.backbone, config.model.N, config.model.M, auxt_text, config.data.batch_size,
                      config.data.crop_size, perf.amp, perf.channels_last, perf.compile,
                      model_key(config.model.model_dump_json(exclude={"init_from", "init_from_partial"})))


@functools.lru_cache(maxsize=256)
def model_key(model_json: str) -> str:
    """What of a model config sets its step time beyond backbone, widths and AuxT, read off the built model:
    its parameter count (any knob that changes a layer changes it) and its backbone's own knobs
    (``BackboneSpec.options``, e.g. ``llic``, ``msp``: a kernel kind or a decoding profile may keep the
    count and still change the work), each shown where it differs from the default. Nothing is listed by
    hand, so a new backbone or knob is priced apart as soon as it changes either. Built on torch's meta
    device: no memory, no initialisation."""
    import torch

    from trainables.backbones import get_backbone
    from trainables.config import ModelConfig
    from trainables.model import create_model

    config = ModelConfig.model_validate_json(model_json)
    try:
        with torch.device("meta"):
            model = create_model(config)
    except Exception:  # noqa: BLE001  (a builder that needs real tensors: build it for real, once)
        model = create_model(config)
    size = sum(p.numel() for p in model.parameters())
    parts = [f"{size / 1e6:.3g}M params" if size >= 1e5 else f"{size} params"]
    section = get_backbone(config.backbone).options
    if section:
        knobs = getattr(config, section).model_dump(mode="json")
        defaults = type(getattr(config, section))().model_dump(mode="json")
        changed = {k: v for k, v in knobs.items() if v != defaults[k]}
        parts += [f"{section}.{k}={v}" for k, v in sorted(changed.items())]
    return ", ".join(parts)


@dataclass(frozen=True)
class Stage:
    """One stage of a trial's ``data.crop_schedule``: from fraction ``at`` of its budget, steps of ``step``."""

    at: float
    step: StepConfig
    config: dict = field(compare=False, hash=False, repr=False)  # the trial config at this stage, unstaged (timing)


@dataclass(frozen=True)
class TrialPlan:
    """One trial as the estimate sees it."""

    step: StepConfig  # the first (or only) stage's
    iterations: int
    eval_every: int
    stratum: tuple  # (key, value) at the scheduler's strata keys: ASHA compares trials only within a stratum
    config: dict = field(compare=False, hash=False, repr=False)  # the plain trial config (for timing)
    stages: tuple[Stage, ...] = ()  # the crop schedule's stages; () = ``step`` throughout

    def phases(self) -> list[Stage]:
        """The stages, at least one (an unstaged trial: ``step`` from 0)."""
        return list(self.stages) or [Stage(0.0, self.step, self.config)]

    def evaluations(self, upto: float) -> list[int]:
        """The iterations at which the trial evaluates (and checkpoints) in its first ``upto``: every
        ``eval_every`` and at the end of its budget, as the engine does."""
        end = min(upto, self.iterations)
        points = list(range(self.eval_every, int(end) + 1, self.eval_every))
        if end >= self.iterations and (not points or points[-1] != self.iterations):
            points.append(self.iterations)
        return points

    def seconds(self, upto: float, seconds: "dict[StepConfig, StepCost | float]") -> float:
        """Seconds of the trial's first ``upto`` iterations: each stage's share at its own step time, each
        evaluation at the cost of the stage it falls in, and the first stage's start-up."""
        phases = self.phases()
        starts = [int(round(s.at * self.iterations)) for s in phases] + [max(upto, self.iterations)]
        costs = [cost_of(seconds[stage.step]) for stage in phases]
        steps = sum(max(0, min(upto, end) - start) * cost.iteration
                    for cost, start, end in zip(costs, starts, starts[1:]))
        evaluations = sum(next(c for c, s, e in zip(costs, starts, starts[1:]) if s < point <= e).evaluation
                          for point in self.evaluations(upto))
        return costs[0].startup + steps + evaluations


def _resolve(node: Any, rng: random.Random) -> Any:
    """Replace every (non-grid) primitive in ``node`` by a drawn value."""
    found = kp.primitive(node)
    if found is not None:
        return _resolve(KINDS[found[0]].draw(found[1], rng), rng)
    if isinstance(node, dict):
        return {key: _resolve(value, rng) for key, value in node.items()}
    return node


def plan_trials(spec: SearchSpec, seed: Optional[int] = 0) -> list[TrialPlan]:
    """The trials of a space: every grid point of its (AuxT-collapsed) template × ``num_samples``, the other
    primitives drawn with ``seed``; each in the stratum the scheduler will put it in (:meth:`SearchSpec.stratify_by`:
    under ASHA the varying budget keys too)."""
    template, num_samples, stratify_by = spec.template, spec.file.search.num_samples, spec.stratify_by()
    sites = [(keys, args) for keys, kind, args in kp.primitive_sites(template) if kind == "grid"]
    rng = random.Random(seed)
    plains = []
    for combo in itertools.product(*(args for _, args in sites)):
        point = kp.substitute(template, ((keys, value) for (keys, _), value in zip(sites, combo)))
        plains += [_resolve(point, rng) for _ in range(num_samples)]
    return plan_configs(plains, stratify_by)


def plan_configs(plains: Sequence[dict], stratify_by: Sequence[str]) -> list[TrialPlan]:
    """The :class:`TrialPlan` of each plain trial config, in its stratum at ``stratify_by``."""
    plans = []
    for plain in plains:
        config = TrialConfig.model_validate(plain)
        dumped = config.model_dump(mode="json")
        stratum = tuple((key, repr(value)) for key, value in stratum_of(dumped, stratify_by).items())
        plans.append(TrialPlan(step_config(config), config.schedule.iterations, config.schedule.eval_every,
                               stratum, plain, _stages(config, plain)))
    return plans


def plan_ladder(spec: SearchSpec) -> tuple[list[TrialPlan], list[TrialPlan]]:
    """A ladder space's trials: (the start points, the fine-tuned rate points of every start point's family).

    Priced as if every start point finished its budget (under ASHA only the start points that do are fine-tuned,
    so this is the most the fine-tune phase costs)."""
    from search.space.ladder import fine_tune_configs, start_spec

    starts = plan_trials(start_spec(spec), seed=spec.file.search.seed)
    tuned = [config for start in starts for config in fine_tune_configs(spec, start.config, "<start checkpoint>")]
    return starts, plan_configs(tuned, spec.stratify_by())


def _stages(config: TrialConfig, plain: dict) -> tuple[Stage, ...]:
    """The stages of ``data.crop_schedule`` (none without one), each with its own step config and an
    unstaged trial config at that crop and batch size (what timing trains)."""
    if not config.data.crop_schedule:
        return ()
    stages = []
    for stage in config.data.crop_schedule:
        batch = stage.batch_size or config.data.batch_size
        unstaged = copy.deepcopy(plain)
        data = unstaged.setdefault("data", {})
        data.pop("crop_schedule", None)
        data.update(crop_size=stage.crop, batch_size=batch)
        stages.append(Stage(stage.at, replace(step_config(config), crop_size=stage.crop, batch_size=batch), unstaged))
    return tuple(stages)


# ----------------------------------------------------------------------------- ASHA
def asha_rungs(grace_period: int, max_t: int, reduction_factor: float, bracket: int = 0) -> list[float]:
    """Rung milestones of one bracket, ascending: ``grace·η^(k+s)`` up to ``max_t``.

    The same count as :class:`search.tuning.schedulers.StratifiedASHA` (Ray's ASHA, Li et al. 2020).
    """
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) - bracket + 1)
    return [grace_period * reduction_factor ** (k + bracket) for k in range(max(count, 0))]


def _report_at(milestone: float, eval_every: int, iterations: int) -> int:
    """The iteration of the first report at or after ``milestone`` (where ASHA can stop the trial)."""
    return min(iterations, int(math.ceil(milestone / eval_every)) * eval_every)


@dataclass(frozen=True)
class RungCount:
    milestone: float
    reach: int
    passed: int


def asha_iterations(trials: Sequence[TrialPlan], seconds: dict[StepConfig, float], rungs: Sequence[float],
                    reduction_factor: float, max_t: int) -> tuple[list[int], list[RungCount]]:
    """Iterations each trial of ONE stratum runs at most under ASHA, and the per-rung counts.

    At each rung, of the ``n`` running trials whose budget goes beyond it, ``ceil(n / η)``
    pass; those with the largest remaining cost (their later, maybe larger-crop, stages
    included) are the ones kept (an upper bound over which trials win). A trial whose budget
    ends before a rung simply completes.
    """
    cap = [min(t.iterations, _report_at(max_t, t.eval_every, t.iterations)) for t in trials]
    run = list(cap)
    alive = list(range(len(trials)))
    counts = []
    for milestone in rungs:
        reaching = [i for i in alive if cap[i] > milestone]
        if not reaching:
            break
        keep = math.ceil(len(reaching) / reduction_factor)
        by_cost = sorted(reaching, key=lambda i: (-(trials[i].seconds(cap[i], seconds)
                                                     - trials[i].seconds(milestone, seconds)), i))
        for i in by_cost[keep:]:
            run[i] = _report_at(milestone, trials[i].eval_every, cap[i])
        alive = by_cost[:keep]
        counts.append(RungCount(milestone, len(reaching), keep))
    return run, counts


# ----------------------------------------------------------------------------- wall time
def trials_per_device(gpus_per_trial: float) -> int:
    """How many trials share one device (``gpus_per_trial: 0.25`` → 4); 1 for whole-GPU trials."""
    if gpus_per_trial <= 0 or gpus_per_trial >= 1:
        return 1
    return max(1, int(math.floor(1.0 / gpus_per_trial + 1e-9)))


def wall_hours(durations: Sequence[float], slots: int, slowdown: float = 1.0) -> float:
    """Hours until ``durations`` (hours each, run alone) finish on ``slots`` parallel slots,
    longest first (LPT), each trial taking ``slowdown`` × its alone time (device sharing)."""
    if not durations:
        return 0.0
    finish = [0.0] * max(1, slots)
    for hours in sorted(durations, reverse=True):
        start = heapq.heappop(finish)
        heapq.heappush(finish, start + hours * slowdown)
    return max(finish)


# ----------------------------------------------------------------------------- the estimate
@dataclass
class Estimate:
    trials: int
    grid_iterations: int
    grid_hours: float  # trial-hours = device-hours with whole-device trials
    asha_iterations: Optional[int]  # None: no early stopping (fifo, pbt)
    asha_hours: Optional[float]
    rungs: list[RungCount]  # summed over strata
    concurrent: int  # trials running at once
    devices: int
    grid_wall_hours: float
    asha_wall_hours: Optional[float]
    device_hours_per_trial_hour: float  # gpus_per_trial for multi-GPU trials, else 1


def estimate(trials: Sequence[TrialPlan], seconds: "dict[StepConfig, StepCost | float]", scheduler: Any, *,
             gpus: int = 1, gpus_per_trial: float = 1.0, max_concurrent: Optional[int] = None,
             launch: float = 0.0, worker_start: float = 0.0) -> Estimate:
    """Device-hours and wall time of a search (see the module docstring).

    ``seconds`` maps each :class:`StepConfig` (of every stage) to its measured :class:`StepCost` (or bare
    seconds per iteration); ``launch``: seconds the search spends around its trials (its imports, Ray's
    start, a worker's imports, the summary, Ray's shutdown), added to the wall time; ``worker_start``:
    seconds a fresh Ray worker spends importing the trainable inside its first trial's time (Ray reuses the
    worker for later trials), charged once per concurrent slot to the device-hours too (it is part of
    ``launch`` for the wall time);
    ``scheduler`` is the space's ``scheduler`` section (``type``, ``grace_period``,
    ``reduction_factor``, ``brackets``, ``max_t``). With ``gpus_per_trial`` 0 the trials run on
    CPUs and ``gpus`` is ignored: ``max_concurrent`` (else every trial) run at once.
    """
    hours = [t.seconds(t.iterations, seconds) / 3600.0 for t in trials]
    grid_iterations = sum(t.iterations for t in trials)
    asha_runs: Optional[list[int]] = None
    rung_totals: dict[float, list[int]] = {}
    if scheduler.type == "asha" and trials:
        budget = max(t.iterations for t in trials)
        max_t = scheduler.max_t or budget
        asha_runs = [0] * len(trials)
        strata: dict[tuple, list[int]] = {}
        for index, trial in enumerate(trials):
            strata.setdefault(trial.stratum, []).append(index)
        for members in strata.values():
            for bracket, share in enumerate(_bracket_shares(len(members), scheduler, max_t)):
                chosen, members = members[:share], members[share:]
                rungs = asha_rungs(scheduler.grace_period, max_t, scheduler.reduction_factor, bracket)
                runs, counts = asha_iterations([trials[i] for i in chosen], seconds, rungs,
                                               scheduler.reduction_factor, max_t)
                for i, value in zip(chosen, runs):
                    asha_runs[i] = value
                for count in counts:
                    total = rung_totals.setdefault(count.milestone, [0, 0])
                    total[0] += count.reach
                    total[1] += count.passed
    per_trial_devices = gpus_per_trial if gpus_per_trial > 1 else 1.0
    if gpus_per_trial > 0:
        per_device = trials_per_device(gpus_per_trial)
        concurrent = gpus * per_device if gpus_per_trial <= 1 else max(1, int(gpus // gpus_per_trial))
    else:
        concurrent = len(trials)
    if max_concurrent:
        concurrent = min(concurrent, max_concurrent)
    concurrent = max(1, min(concurrent, len(trials) or 1))
    # Trials spread evenly over the devices; a device shared by k trials runs each k times slower.
    slowdown = max(1.0, concurrent / gpus) if 0 < gpus_per_trial < 1 else 1.0
    first_trials = worker_start * min(concurrent, len(trials)) / 3600.0 * per_trial_devices
    asha_hours = None
    asha_wall = None
    if asha_runs is not None:
        asha_trial_hours = [t.seconds(run, seconds) / 3600.0 for run, t in zip(asha_runs, trials)]
        asha_hours = sum(asha_trial_hours) * per_trial_devices + first_trials
        asha_wall = wall_hours(asha_trial_hours, concurrent, slowdown) + launch / 3600.0
    return Estimate(
        trials=len(trials), grid_iterations=grid_iterations,
        grid_hours=sum(hours) * per_trial_devices + first_trials,
        asha_iterations=sum(asha_runs) if asha_runs is not None else None, asha_hours=asha_hours,
        rungs=[RungCount(m, reach, passed) for m, (reach, passed) in sorted(rung_totals.items())],
        concurrent=concurrent, devices=gpus if gpus_per_trial > 0 else 0,
        grid_wall_hours=wall_hours(hours, concurrent, slowdown) + launch / 3600.0, asha_wall_hours=asha_wall,
        device_hours_per_trial_hour=per_trial_devices,
    )


def _bracket_shares(count: int, scheduler: Any, max_t: int) -> list[int]:
    """How many of a stratum's ``count`` trials go to each ASHA bracket: in proportion to
    StratifiedASHA's weights ``e^(rungs - most rungs)``, the rounding remainder going to the
    brackets with the fewest rungs (the least pruning: an upper bound)."""
    brackets = max(1, int(getattr(scheduler, "brackets", 1) or 1))
    sizes = [len(asha_rungs(scheduler.grace_period, max_t, scheduler.reduction_factor, s)) for s in range(brackets)]
    weights = [math.exp(size - max(sizes)) for size in sizes]
    exact = [count * w / sum(weights) for w in weights]
    shares = [int(math.floor(x)) for x in exact]
    for s in sorted(range(brackets), key=lambda s: (sizes[s], -s))[: count - sum(shares)]:
        shares[s] += 1
    return shares
