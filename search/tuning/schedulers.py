"""Trial schedulers built from a space's ``scheduler`` section: stratified ASHA, FIFO, stratified PBT.

Two things the stock Ray schedulers get wrong for R-D searches, fixed here:

* **Strata.** ``eval/rd_loss = λ·D + bpp`` has a different scale at every λ (and per
  distortion), so a high-rate trial would be stopped by low-rate results and PBT would clone
  weights across λ. :class:`StratifiedASHA` keeps one set of ASHA rungs per stratum and
  :class:`StratifiedPBT` ranks a trial only within its stratum; the stratum of a trial is its
  values at ``search.stratify_by`` (default ``loss.lmbda``, ``loss.distortion``).
* **Resume.** Ray never saves the scheduler with the experiment state, and ``Tuner.restore``
  rebuilds it from the pickle taken before the search started, so stock ASHA forgets every
  rung record (ray-project/ray#30838) and a resumed search prunes blindly.
  :class:`StratifiedASHA` writes its rungs, bracket assignments and stop decisions as JSON
  (``lic_search_asha.json``) into the experiment folder on every change, through the
  experiment's own (pyarrow) filesystem, and reads them back when the restored search adds
  its first trial.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import random
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import numpy as np
from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining, TrialScheduler

from search.experiment.ray_internals import experiment_location
from search.experiment.atomic import write_local_text, write_text
from search.space.sections import DEFAULT_STRATIFY_BY, trial_default
from search.space.strata import stratum_of
from trainables import metrics as M
from trainables.errors import LicSearchError

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

STATE_FILE = "lic_search_asha.json"
_STATE_VERSION = 1


# ----------------------------------------------------------------------------- strata
def stratum_key(config: dict, keys: Sequence[str]) -> str:
    """A stable text key of the values that must match for two trials to be compared.

    A key the config leaves out takes its :class:`TrialConfig` default, so ``loss.distortion``
    unset and ``mse`` are one stratum."""
    return ", ".join(f"{key}={json.dumps(value, sort_keys=True)}" for key, value in stratum_of(config, keys).items())


# ----------------------------------------------------------------------------- ASHA
class _Bracket:
    """One ASHA bracket: rungs (descending milestones) with the scores recorded at each.

    The rung rule is Ray's ``AsyncHyperBandScheduler`` (Li et al. 2020, Algorithm 2): a trial
    reaching a rung is stopped if its score is below the ``1 - 1/η`` quantile of the scores
    recorded there so far. Scores are ``±metric`` so that larger is better.
    """

    def __init__(self, min_t: float, max_t: float, reduction_factor: float, s: int):
        self.rf = reduction_factor
        count = int(np.log(max_t / min_t) / np.log(reduction_factor) - s + 1)
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (min_t * reduction_factor ** (k + s), {}) for k in reversed(range(count))
        ]

    def cutoff(self, recorded: dict[str, float]) -> Optional[float]:
        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100))

    def on_result(self, trial_id: str, time: float, score: float) -> str:
        action = TrialScheduler.CONTINUE
        for milestone, recorded in self.rungs:
            if time < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            if cutoff is not None and score < cutoff:
                action = TrialScheduler.STOP
            recorded[trial_id] = score
            break
        return action

    def size(self) -> int:
        return sum(len(recorded) for _, recorded in self.rungs)

    def to_json(self) -> list:
        return [{"milestone": milestone, "recorded": dict(recorded)} for milestone, recorded in self.rungs]

    def load_json(self, rungs: list) -> None:
        saved = {float(rung["milestone"]): rung["recorded"] for rung in rungs}
        for milestone, recorded in self.rungs:
            recorded.clear()
            recorded.update({tid: float(score) for tid, score in saved.get(float(milestone), {}).items()})


class StratifiedASHA(FIFOScheduler):
    """ASHA with one rung record per stratum, persisted in the experiment folder.

    A trial is compared only with trials of its stratum (:func:`stratum_key` of its config),
    so in a search over several λ a high-rate trial never stops a low-rate one. The rungs,
    each trial's stratum and bracket, and every STOP decision survive ``Tuner.restore``: a
    resumed search keeps pruning against the records taken before the interruption, and a
    trial that was stopped just before the driver died is stopped again if it resumes.
    """

    def __init__(self, *, max_t: int, metric: Optional[str] = None, mode: Optional[str] = None,
                 grace_period: int = 1, reduction_factor: float = 2.0, brackets: int = 1,
                 stratify_by: Iterable[str] = DEFAULT_STRATIFY_BY, time_attr: str = M.ITERATIONS,
                 state_path: Optional[str] = None, require_state: bool = False):
        if not max_t > 0:
            raise ValueError(f"max_t must be positive, got {max_t}")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"`0 < grace_period <= max_t` must hold, but got (grace_period={grace_period}, "
                             f"max_t={max_t})")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must exceed 1, got {reduction_factor}")
        if not brackets >= 1:
            raise ValueError(f"brackets must be at least 1, got {brackets}")
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        super().__init__()
        self._time_attr = time_attr
        self._max_t = max_t
        self._grace_period = grace_period
        self._reduction_factor = reduction_factor
        self._num_brackets = brackets
        self._stratify_by = tuple(stratify_by)
        self._rank_metric = metric
        self._rank_mode = mode
        self._state_path = state_path
        self._require_state = require_state  # a search's scheduler: rungs that cannot be kept are an error
        self._strata: dict[str, list[_Bracket]] = {}
        self._assignment: dict[str, tuple[str, int]] = {}  # trial_id -> (stratum, bracket index)
        self._stopped: dict[str, float] = {}  # trial_id -> time of the STOP decision
        self._target: Optional[tuple[Any, str]] = None  # (pyarrow filesystem, path) of the state file
        self._loaded = False

    # ------------------------------------------------------------ properties
    @property
    def metric(self) -> Optional[str]:
        return self._rank_metric

    @property
    def _metric_op(self) -> float:
        return 1.0 if self._rank_mode == "max" else -1.0

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        if (self._rank_metric and metric) or (self._rank_mode and mode):
            return False
        self._rank_metric = self._rank_metric or metric
        self._rank_mode = self._rank_mode or mode
        return True

    def strata(self) -> dict[str, list[list[tuple[float, dict[str, float]]]]]:
        """Per stratum, per bracket, the rungs as (milestone, {trial_id: score}); a copy."""
        return {key: [[(m, dict(r)) for m, r in bracket.rungs] for bracket in brackets]
                for key, brackets in self._strata.items()}

    def stratum_of(self, trial_id: str) -> Optional[str]:
        assigned = self._assignment.get(trial_id)
        return assigned[0] if assigned else None

    @property
    def stopped(self) -> dict[str, float]:
        """trial_id -> iteration at which ASHA stopped it."""
        return dict(self._stopped)

    # ----------------------------------------------------------------- hooks
    def on_trial_add(self, tune_controller, trial: "Trial") -> None:
        if not self._rank_metric or not self._rank_mode:
            raise LicSearchError(f"{type(self).__name__} needs a metric and a mode, got "
                                 f"(metric={self._rank_metric!r}, mode={self._rank_mode!r})")
        self._ensure_loaded(trial)
        if trial.trial_id in self._assignment:
            return  # a restored trial keeps its stratum and bracket
        key = stratum_key(trial.config, self._stratify_by)
        brackets = self._brackets(key)
        sizes = np.array([len(b.rungs) for b in brackets], dtype=float)
        weights = list(np.e ** (sizes - sizes.max()))
        index = random.Random(trial.trial_id).choices(range(len(brackets)), weights=weights)[0]
        self._assignment[trial.trial_id] = (key, index)
        self._save()

    def on_trial_result(self, tune_controller, trial: "Trial", result: dict) -> str:
        if M.is_notice(result) or self._time_attr not in result or self._rank_metric not in result:
            return TrialScheduler.CONTINUE  # a notice (checkpoint between evaluations) has no scores
        time = float(result[self._time_attr])
        if not math.isfinite(float(result[self._rank_metric])):  # NaN/inf at any rung: nothing to compare, stop
            self._stopped[trial.trial_id] = time
            self._save()
            return TrialScheduler.STOP
        if trial.trial_id in self._stopped and time >= self._stopped[trial.trial_id]:
            return TrialScheduler.STOP  # decided before a restore; the trial came back from an older checkpoint
        if time >= self._max_t:
            return TrialScheduler.STOP
        bracket = self._bracket_of(trial)
        before = bracket.size()
        action = bracket.on_result(trial.trial_id, time, self._metric_op * float(result[self._rank_metric]))
        if action == TrialScheduler.STOP:
            self._stopped[trial.trial_id] = time
        if action == TrialScheduler.STOP or bracket.size() != before:
            self._save()
        return action

    def on_trial_complete(self, tune_controller, trial: "Trial", result: dict) -> None:
        if not result or self._time_attr not in result or self._rank_metric not in result:
            return
        if not math.isfinite(float(result[self._rank_metric])):
            return
        self._bracket_of(trial).on_result(trial.trial_id, float(result[self._time_attr]),
                                          self._metric_op * float(result[self._rank_metric]))
        self._save()

    def on_trial_remove(self, tune_controller, trial: "Trial") -> None:
        pass

    def debug_string(self) -> str:
        lines = [f"Using StratifiedASHA: num_stopped={len(self._stopped)}"]
        for key, brackets in self._strata.items():
            for bracket in brackets:
                rungs = " | ".join(f"Iter {m:.0f}: {bracket.cutoff(r)}" for m, r in bracket.rungs)
                lines.append(f"[{key}] Bracket: {rungs}")
        return "\n".join(lines)

    # -------------------------------------------------------------- internals
    def _brackets(self, key: str) -> list[_Bracket]:
        if key not in self._strata:
            self._strata[key] = [_Bracket(self._grace_period, self._max_t, self._reduction_factor, s)
                                 for s in range(self._num_brackets)]
        return self._strata[key]

    def _bracket_of(self, trial: "Trial") -> _Bracket:
        if trial.trial_id not in self._assignment:  # not added through on_trial_add (should not happen)
            self.on_trial_add(None, trial)
        key, index = self._assignment[trial.trial_id]
        return self._brackets(key)[index]

    # ------------------------------------------------------------ persistence
    def state(self) -> dict:
        """Everything needed to continue: JSON-serialisable."""
        return {
            "version": _STATE_VERSION,
            "stratify_by": list(self._stratify_by),
            "time_attr": self._time_attr,
            "metric": self._rank_metric,
            "mode": self._rank_mode,
            "strata": {key: [b.to_json() for b in brackets] for key, brackets in self._strata.items()},
            "assignment": {tid: [key, index] for tid, (key, index) in self._assignment.items()},
            "stopped": dict(self._stopped),
        }

    def load_state(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise LicSearchError(f"ASHA state version {state.get('version')!r} is not {_STATE_VERSION}")
        if list(state.get("stratify_by", [])) != list(self._stratify_by):
            raise LicSearchError(f"the saved ASHA rungs are stratified by {state.get('stratify_by')}, "
                                 f"this search by {list(self._stratify_by)}: keep search.stratify_by unchanged "
                                 "when resuming")
        self._strata = {}
        for key, brackets in state["strata"].items():
            for bracket, rungs in zip(self._brackets(key), brackets):
                bracket.load_json(rungs)
        self._assignment = {tid: (key, int(index)) for tid, (key, index) in state["assignment"].items()}
        self._stopped = {tid: float(t) for tid, t in state["stopped"].items()}

    def save(self, checkpoint_path: str) -> None:
        write_local_text(checkpoint_path, json.dumps(self.state(), indent=1))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as handle:
            self.load_state(json.load(handle))

    def _ensure_loaded(self, trial: "Trial") -> None:
        if self._loaded:
            return
        self._loaded = True
        self._target = self._locate(trial)
        if self._target is None:
            if self._require_state:
                raise LicSearchError("StratifiedASHA: the trial names no experiment folder to keep the rung records "
                                     f"in ({STATE_FILE}); a resumed search would prune against empty rungs")
            logger.warning("StratifiedASHA: no experiment folder known; rungs will not survive a restore")
            return
        from pyarrow.fs import FileType

        filesystem, path = self._target
        if filesystem.get_file_info(path).type != FileType.File:
            return
        with filesystem.open_input_stream(path) as stream:
            saved = json.loads(stream.readall().decode())
        self.load_state(saved)
        logger.info("StratifiedASHA: restored %d rung records from %s",
                    sum(b.size() for brackets in self._strata.values() for b in brackets), path)

    def _locate(self, trial: "Trial") -> Optional[tuple[Any, str]]:
        from pyarrow.fs import LocalFileSystem

        if self._state_path:
            return LocalFileSystem(), self._state_path
        storage = getattr(trial, "storage", None)
        if storage is None:
            return None
        try:
            filesystem, folder = experiment_location(storage)
            return filesystem, f"{folder.rstrip('/')}/{STATE_FILE}"
        except AttributeError:  # a storage context without an experiment folder (Ray's, before the Tuner set one)
            return None

    def _save(self) -> None:
        if self._target is None:
            return
        filesystem, path = self._target
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        write_text(filesystem, path, json.dumps(self.state()))

    def __getstate__(self) -> dict:
        # Ray pickles the scheduler into tuner.pkl; the file in the experiment folder is the
        # authority on restore, so a restored copy re-reads it at its first trial.
        state = self.__dict__.copy()
        state.update(_target=None, _loaded=False)
        return state


# ----------------------------------------------------------------------------- PBT
class StratifiedPBT(TrialScheduler):
    """Population-based training of ``schedule.lr`` / ``milestones`` / ``gamma`` within strata.

    One stock Ray ``PopulationBasedTraining`` per stratum behind this router (Ray's public
    ``TrialScheduler`` interface): each trial goes to its stratum's population, so a trial in the
    bottom quantile of *its stratum* clones the weights (checkpoint) and the schedule of a top
    trial of the same stratum, then perturbs the schedule; it never adopts another λ. Every new
    config is checked against :class:`TrialConfig` and ``lr`` is clipped to the declared range
    (PBT's public ``custom_explore_fn``), so mutations always give valid trials.
    """

    def __init__(self, *, metric: str, mode: str, perturbation_interval: int, mutations: Any,
                 burn_in_period: int = 0, quantile_fraction: float = 0.25,
                 resample_probability: float = 0.25, perturbation_factors: tuple[float, float] = (1.2, 0.8),
                 stratify_by: Iterable[str] = DEFAULT_STRATIFY_BY, time_attr: str = M.ITERATIONS):
        from ray import tune

        schedule: dict[str, Any] = {}
        self._lr_bounds: Optional[tuple[float, float]] = None
        if getattr(mutations, "lr", None) is not None:
            low, high = mutations.lr
            self._lr_bounds = (float(low), float(high))
            schedule["lr"] = tune.loguniform(low, high)
        if getattr(mutations, "milestones", None) is not None:
            schedule["milestones"] = [list(values) for values in mutations.milestones]
        if getattr(mutations, "gamma", None) is not None:
            schedule["gamma"] = list(mutations.gamma)
        # Keys only some decays have (plateau's patience, cosine/plateau's min_lr): explore_schedule.
        self._patience: Optional[list[int]] = getattr(mutations, "patience", None)
        self._min_lr_bounds: Optional[tuple[float, float]] = getattr(mutations, "min_lr", None)
        self._by_decay = self._patience is not None or self._min_lr_bounds is not None
        if not schedule and not self._by_decay:
            raise LicSearchError("scheduler.pbt.mutations: name at least one of lr, milestones, gamma, patience, "
                                 "min_lr")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self._pbt_metric, self._pbt_mode = metric, mode
        self._time_attr = time_attr
        self._perturbation_interval = perturbation_interval
        self._burn_in_period = burn_in_period
        self._hyperparam_mutations = {"schedule": schedule} if schedule else {}
        self._quantile_fraction = quantile_fraction
        self._resample_probability = resample_probability
        self._perturbation_factors = tuple(perturbation_factors)
        self._stratify_by = tuple(stratify_by)
        self._populations: dict[str, PopulationBasedTraining] = {}
        self._members: dict[str, list["Trial"]] = {}  # stratum -> its trials, in the order they were added
        self._assigned: dict[str, str] = {}  # trial_id -> its stratum when added (PBT may mutate a stratum key)
        self._values: dict[str, dict[str, Any]] = {}  # stratum -> its values at stratify_by
        self._progress: dict[str, float] = {}  # trial_id -> time_attr at its last result

    # ------------------------------------------------------------ properties
    @property
    def metric(self) -> str:
        return self._pbt_metric

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        return (metric is None or metric == self._pbt_metric) and (mode is None or mode == self._pbt_mode)

    def stratum_of(self, trial: "Trial") -> str:
        """The trial's stratum: the one it was added to, else that of its config."""
        return self._assigned.get(trial.trial_id) or stratum_key(trial.config, self._stratify_by)

    def population(self, trial_or_stratum: "Trial | str") -> PopulationBasedTraining:
        """The stock Ray PBT of a trial's stratum (or of a stratum key), made on first use."""
        key = trial_or_stratum if isinstance(trial_or_stratum, str) else self.stratum_of(trial_or_stratum)
        if not isinstance(trial_or_stratum, str):
            self._values.setdefault(key, stratum_of(trial_or_stratum.config, self._stratify_by))
        if key not in self._populations:
            self._populations[key] = PopulationBasedTraining(
                time_attr=self._time_attr, metric=self._pbt_metric, mode=self._pbt_mode,
                perturbation_interval=self._perturbation_interval, burn_in_period=self._burn_in_period,
                hyperparam_mutations=copy.deepcopy(self._hyperparam_mutations),
                quantile_fraction=self._quantile_fraction, resample_probability=self._resample_probability,
                perturbation_factors=self._perturbation_factors,
                custom_explore_fn=functools.partial(self._explore, key), log_config=True, require_attrs=True,
                synch=False,
            )
            self._members[key] = []
        return self._populations[key]

    # ----------------------------------------------------------------- hooks
    def on_trial_add(self, tune_controller, trial: "Trial") -> None:
        key = self.stratum_of(trial)
        self.population(trial).on_trial_add(tune_controller, trial)
        self._assigned[trial.trial_id] = key
        self._members[key].append(trial)

    def on_trial_result(self, tune_controller, trial: "Trial", result: dict) -> str:
        if M.is_notice(result):
            return TrialScheduler.CONTINUE  # a checkpoint between evaluations: PBT acts on evaluations only
        if self._time_attr in result:
            self._progress[trial.trial_id] = float(result[self._time_attr])
        key = self.stratum_of(trial)
        with self.defaults_filled(self._members.get(key, [])):
            return self.population(key).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: "Trial", result: dict) -> None:
        self.population(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial: "Trial") -> None:
        self.population(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: "Trial") -> None:
        self.population(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Optional["Trial"]:
        """PBT's rule over every stratum: the pending or paused trial that has trained least."""
        from ray.tune.experiment import Trial

        candidates = [trial for trial in tune_controller.get_trials() if trial.status in (Trial.PENDING, Trial.PAUSED)]
        candidates.sort(key=lambda trial: self._progress.get(trial.trial_id, 0.0))
        return candidates[0] if candidates else None

    def debug_string(self) -> str:
        return "\n".join(f"[{key}] {population.debug_string()}" for key, population in self._populations.items()) \
            or "StratifiedPBT: no trials yet"

    # -------------------------------------------------------------- exploring
    @contextlib.contextmanager
    def defaults_filled(self, trials: Sequence["Trial"]):
        """While PBT may explore from these trials: every mutated schedule key in their configs.

        Ray's explore reads every mutated key from the clone's config; a space may leave one out (gamma of a
        cosine trial, milestones of a plateau one): explore from its default instead. A trial whose config PBT
        replaced meanwhile (the one that exploited) keeps its new config."""
        keys = list(self._hyperparam_mutations.get("schedule", {}))
        swapped = []
        for trial in trials:
            schedule = trial.config.get("schedule", {})
            if all(key in schedule for key in keys):
                continue
            filled = {**trial.config, "schedule": {**{key: trial_default(f"schedule.{key}") for key in keys},
                                                   **schedule}}
            swapped.append((trial, trial.config, filled))
            trial.config = filled
        try:
            yield
        finally:
            for trial, original, filled in swapped:
                if trial.config is filled:
                    trial.config = original

    def _explore(self, stratum: str, config: dict) -> dict:
        """PBT's ``custom_explore_fn`` of one stratum's population: the decay-specific keys, then the repair."""
        mutated = {f"schedule.{key}" for key in self._hyperparam_mutations.get("schedule", {})}
        if self._by_decay:
            mutated |= {"schedule.patience", "schedule.min_lr"}
        fixed = [key for key in self._stratify_by if key not in mutated]  # what exploring must never change
        values = self._values.get(stratum)
        if values is not None and stratum_of(config, fixed) != {key: values[key] for key in fixed}:
            raise LicSearchError(f"PBT of {stratum} explored a config of {stratum_key(config, self._stratify_by)}: "
                                 "strata must match")
        if self._by_decay:
            config = self.explore_schedule(config)
        return self.repair(config)

    def explore_schedule(self, config: dict) -> dict:
        """PBT's explore step for keys only some decays have, as Ray explores lr and milestones:
        plateau's ``patience`` moves to a neighbouring candidate (or is resampled), ``min_lr`` of
        cosine and plateau trials is perturbed or resampled within its range, below ``lr``."""
        from trainables.config import PLATEAU_PATIENCE

        schedule = config.setdefault("schedule", {})
        decay = schedule.get("decay", "step")
        resample = random.random() < self._resample_probability
        if self._patience is not None and decay == "plateau":
            current = schedule.get("patience") or PLATEAU_PATIENCE
            candidates = list(self._patience)
            if resample or current not in candidates:
                schedule["patience"] = random.choice(candidates)
            else:
                index = candidates.index(current) + random.choice([-1, 1])
                schedule["patience"] = candidates[min(max(index, 0), len(candidates) - 1)]
        if self._min_lr_bounds is not None and decay in ("cosine", "plateau"):
            low, high = self._min_lr_bounds
            current = schedule.get("min_lr")
            if resample or not current:
                value = math.exp(random.uniform(math.log(low), math.log(high)))
            else:
                value = float(current) * random.choice(self._perturbation_factors)
            value = float(min(max(value, low), high))
            if value < float(schedule.get("lr", trial_default("schedule.lr"))):
                schedule["min_lr"] = value
        return config

    def repair(self, config: dict) -> dict:
        """Clip ``schedule.lr`` into its range, drop what the trial's decay does not read (Ray mutates
        milestones and gamma of every trial), keep ``min_lr`` below ``lr`` (lowered to lr/10 when a
        mutation crossed them) and validate the whole trial config."""
        from pydantic import ValidationError

        from trainables.config import TrialConfig

        schedule = config.get("schedule", {})
        if self._lr_bounds is not None and "lr" in schedule:
            low, high = self._lr_bounds
            schedule["lr"] = float(min(max(float(schedule["lr"]), low), high))
        decay = schedule.get("decay", "step")
        if decay != "step":
            schedule.pop("milestones", None)
        if decay == "cosine":
            schedule.pop("gamma", None)
        if "milestones" in schedule:
            schedule["milestones"] = sorted({float(v) for v in schedule["milestones"]})
        lr = float(schedule.get("lr", trial_default("schedule.lr")))
        if schedule.get("min_lr") is not None and float(schedule["min_lr"]) >= lr:
            schedule["min_lr"] = lr / 10
        try:
            TrialConfig.model_validate(config)
        except ValidationError as error:
            raise LicSearchError(f"PBT produced an invalid trial config: {error}") from None
        return config


# ----------------------------------------------------------------------------- builder
def build_scheduler(spec) -> TrialScheduler:
    """The scheduler of a space (``spec.file.scheduler``, ``spec.file.search``, ``spec.budget()``)."""
    config = spec.file.scheduler
    search = spec.file.search
    stratify_by = tuple(spec.stratify_by())  # the strata of every scheduler, estimate, best and report
    if config.type == "fifo":
        return FIFOScheduler()
    if config.type == "pbt":
        pbt = config.pbt
        return StratifiedPBT(
            metric=search.metric, mode=search.mode, perturbation_interval=pbt.perturbation_interval,
            burn_in_period=pbt.burn_in_period, mutations=pbt.mutations, quantile_fraction=pbt.quantile_fraction,
            resample_probability=pbt.resample_probability, perturbation_factors=pbt.perturbation_factors,
            stratify_by=stratify_by,
        )
    if config.type != "asha":
        raise LicSearchError(f"scheduler.type: unknown scheduler {config.type!r}; allowed: asha, fifo, pbt")
    return StratifiedASHA(
        metric=search.metric, mode=search.mode, max_t=getattr(config, "max_t", None) or spec.budget(),
        grace_period=config.grace_period, reduction_factor=config.reduction_factor, brackets=config.brackets,
        stratify_by=stratify_by, require_state=True,
    )
