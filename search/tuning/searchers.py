"""Search algorithms built from a space's ``search`` section: grid/random and Optuna (TPE, NSGA-II).

Design of the Optuna search (:class:`StratifiedOptunaSearch`):

* **Grids are strata, not categories.** Every grid point of the space (Ray's grid
  expansion, nested grids included) gets its own Optuna study and ``num_samples`` trials,
  proposed round-robin across grid points; the study samples only the non-grid primitives.
  So a space with ``loss.lmbda: {grid: [...]}`` runs one TPE per λ and never ranks R-D
  losses of different λ against each other, an ablation grid × tuned learning rate tunes
  the rate per ablation arm, and the trial count is exactly the one of random search
  (grid points × ``num_samples``). A single-objective study refuses a *sampled* λ (see
  ``search.space.sections.check_search_setup``); a multi-objective study over
  (``eval/bpp``, ``eval/mse``) may sample λ because those objectives do not depend on it.
* **Stopped trials are pruned.** Ray's ``OptunaSearch`` tells Optuna that an ASHA-stopped
  trial is COMPLETE with the value it had when stopped, which TPE then reads as a finished
  (bad or, early in training, misleadingly good) configuration. :class:`PrunedOptunaSearch`
  tells Optuna PRUNED whenever the trial ended before its budget ``schedule.iterations``;
  Optuna keeps the last intermediate value (reported at step ``iterations``) and TPE ranks
  pruned trials below all complete ones, by how far they got.

The Optuna search proposes whole trial configs, so Ray must get ``param_space={}`` with it:
use :func:`tuner_param_space` and :func:`tune_num_samples` when building the Tuner.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from typing import Any, Optional, Union

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search.experiment.atomic import write_local_text
from search.space.keypath import get_path, set_path
from trainables import metrics as M
from trainables.config import flatten
from trainables.errors import LicSearchError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers
def grid_cells(space: dict) -> list[tuple[dict, dict]]:
    """Every grid point of a Ray param space: (assignments {dotted key: value}, config with grids resolved).

    Grids inside grid values (the AuxT collapse) are expanded too. Non-grid domains stay."""
    from ray.tune.search.variant_generator import parse_spec_vars

    _, _, grids = parse_spec_vars(space)
    if not grids:
        return [({}, space)]
    path, domain = grids[0]
    dotted = ".".join(map(str, path))
    cells = []
    for value in domain.categories:
        config = copy.deepcopy(space)
        set_path(config, tuple(path), copy.deepcopy(value))
        for assignments, resolved in grid_cells(config):
            # a grid value holding grids (the AuxT collapse) is labelled by its resolved value
            inner = {k: v for k, v in assignments.items() if not k.startswith(dotted + ".")}
            cells.append(({dotted: get_path(resolved, tuple(path)), **inner}, resolved))
    return cells


def _has_domains(space: Any) -> bool:
    from ray.tune.search.variant_generator import parse_spec_vars

    return bool(parse_spec_vars(space)[1]) if isinstance(space, dict) else False


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- Optuna
class PrunedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that a trial ended before its budget reaches Optuna as PRUNED.

    Intermediate values are reported at step ``iterations`` (the trainable's own counter),
    so a pruned trial's value is its last evaluation and its step says how far it got.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.budgets: dict[str, int] = {}
        self._reported: dict[str, int] = {}

    def _report(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id not in self._ot_trials:
            return  # Optuna has no intermediate values for multi-objective studies
        value, step = result.get(self.metric), result.get(M.ITERATIONS)
        if not _finite(value) or not _finite(step) or self._reported.get(trial_id, -1) >= int(step):
            return
        self._ot_trials[trial_id].report(float(value), int(step))
        self._reported[trial_id] = int(step)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials and not M.is_notice(result):
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        error = error or bool((result or {}).get(M.DIVERGED))  # a diverged trial is FAILED, not PRUNED
        budget = self.budgets.get(trial_id)
        reached = (result or {}).get(M.ITERATIONS)
        if error or not result or budget is None or not _finite(reached) or int(reached) >= budget:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        from optuna.trial import TrialState

        self._report(trial_id, result)  # the result that got the trial stopped was not reported yet
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_sampler(kind: str, seed: Optional[int], startup_trials: Optional[int]):
    """An Optuna sampler: TPE (single/multi-objective, constant liar for parallel trials) or NSGA-II."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=startup_trials or 50)
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10 if startup_trials is None
                                              else startup_trials, constant_liar=True)
    raise LicSearchError(f"search.sampler: unknown sampler {kind!r}; allowed: tpe, nsga2")


class StratifiedOptunaSearch(Searcher):
    """One Optuna study per grid point of the space; ``samples_per_cell`` trials each.

    ``space`` is a Ray param space (``tune.grid_search`` and domains, nested dicts). The
    searcher proposes *complete* trial configs, so give Ray ``param_space={}``.
    """

    def __init__(self, space: dict, metric: Union[str, list[str]], mode: Union[str, list[str]],
                 samples_per_cell: int = 1, sampler: str = "tpe", seed: Optional[int] = None,
                 startup_trials: Optional[int] = None):
        super().__init__(metric=metric, mode=mode)
        if samples_per_cell < 1:
            raise ValueError(f"samples_per_cell must be at least 1, got {samples_per_cell}")
        self.samples_per_cell = samples_per_cell
        self.cells: list[dict] = []  # grid assignments of each cell (for display)
        self._configs: list[dict] = []  # each cell's config, grids resolved, domains left in
        self._searchers: list[Optional[PrunedOptunaSearch]] = []
        for index, (assignments, config) in enumerate(grid_cells(copy.deepcopy(space))):
            self.cells.append(assignments)
            self._configs.append(config)
            if not _has_domains(config):
                self._searchers.append(None)  # nothing to sample at this grid point
                continue
            cell_seed = None if seed is None else seed + index
            self._searchers.append(PrunedOptunaSearch(
                space=OptunaSearch.convert_search_space(config), metric=metric, mode=mode,
                sampler=make_sampler(sampler, cell_seed, startup_trials), study_name=f"cell-{index}",
            ))
        self._counts = [0] * len(self.cells)
        self._trial_cell: dict[str, int] = {}
        self._trial_config: dict[str, dict] = {}

    # ------------------------------------------------------------- Ray hooks
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        from ray.tune.search.variant_generator import parse_spec_vars

        if config:
            _, domains, grids = parse_spec_vars(config)
            if domains or grids:
                raise LicSearchError("StratifiedOptunaSearch proposes whole trial configs: build the Tuner "
                                     "with param_space={} (search.tuning.searchers.tuner_param_space)")
        return True

    def suggest(self, trial_id: str) -> Optional[Union[dict, str]]:
        if trial_id in self._trial_config:
            return copy.deepcopy(self._trial_config[trial_id])
        open_cells = [i for i, count in enumerate(self._counts) if count < self.samples_per_cell]
        if not open_cells:
            return Searcher.FINISHED
        index = min(open_cells, key=lambda i: (self._counts[i], i))
        config = copy.deepcopy(self._configs[index])
        searcher = self._searchers[index]
        if searcher is not None:
            params = searcher.suggest(trial_id)
            for dotted, value in _flatten(params).items():
                set_path(config, tuple(dotted.split("/")), value)
            budget = get_path(config, ("schedule", "iterations"))
            if budget is not None:
                searcher.budgets[trial_id] = int(budget)
        self._counts[index] += 1
        self._trial_cell[trial_id] = index
        self._trial_config[trial_id] = config
        return copy.deepcopy(config)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        searcher = self._searcher_of(trial_id)
        if searcher is not None:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        searcher = self._searcher_of(trial_id)
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def _searcher_of(self, trial_id: str) -> Optional[PrunedOptunaSearch]:
        index = self._trial_cell.get(trial_id)
        return None if index is None else self._searchers[index]

    # --------------------------------------------------------------- queries
    def studies(self) -> list[tuple[dict, Any]]:
        """(grid assignments, optuna.Study) of every grid point that samples something."""
        return [(cell, searcher._ot_study) for cell, searcher in zip(self.cells, self._searchers)
                if searcher is not None]

    # ----------------------------------------------------------- persistence
    # JSON, not pickle: resuming an experiment folder must not run code found in it (Ray's own
    # tuner.pkl aside, see the README). Optuna trials are written with Optuna's own distribution
    # JSON and rebuilt with add_trial (finished) or enqueue_trial + ask (running).
    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def save(self, checkpoint_path: str) -> None:
        state = {"version": 1, "counts": self._counts, "trial_cell": self._trial_cell,
                 "trial_config": self._trial_config,
                 "cells": [None if s is None else _cell_state(s) for s in self._searchers]}
        write_local_text(checkpoint_path, json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as handle:
            state = json.load(handle)
        if len(state["cells"]) != len(self._searchers):
            raise LicSearchError(f"{checkpoint_path}: the saved Optuna state has {len(state['cells'])} grid points, "
                                 f"the space {len(self._searchers)}; was the space changed?")
        self._counts = list(state["counts"])
        self._trial_cell = {k: int(v) for k, v in state["trial_cell"].items()}
        self._trial_config = state["trial_config"]
        for searcher, cell in zip(self._searchers, state["cells"]):
            if searcher is not None and cell is not None:
                _restore_cell(searcher, cell)

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        import glob
        import os

        if not glob.glob(os.path.join(checkpoint_dir, self.CKPT_FILE_TMPL.format("*"))):
            logger.warning("no Optuna searcher state (%s) in %s: the Optuna studies start empty",
                           self.CKPT_FILE_TMPL.format("*"), checkpoint_dir)
            return
        super().restore_from_dir(checkpoint_dir)


def _cell_state(searcher: PrunedOptunaSearch) -> dict:
    from optuna.distributions import distribution_to_json

    numbers = {trial_id: trial.number for trial_id, trial in searcher._ot_trials.items()}
    trials = [{"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
               "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
               "intermediate": {str(step): value for step, value in t.intermediate_values.items()}}
              for t in searcher._ot_study.get_trials(deepcopy=False)]
    return {"trials": trials, "ray_trials": numbers, "completed": sorted(searcher._completed_trials),
            "budgets": searcher.budgets, "reported": searcher._reported}


def _restore_cell(searcher: PrunedOptunaSearch, cell: dict) -> None:
    """Rebuild one study in trial-number order: finished trials as they were, running ones asked again
    with their parameters (so Ray's trial can still report and finish)."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    study = searcher._ot_study
    by_number = {number: trial_id for trial_id, number in cell["ray_trials"].items()}
    searcher._ot_trials = {}
    for saved in sorted(cell["trials"], key=lambda t: t["number"]):
        distributions = {k: json_to_distribution(d) for k, d in saved["distributions"].items()}
        intermediate = {int(step): value for step, value in saved["intermediate"].items()}
        state = TrialState[saved["state"]]
        if state.is_finished():
            study.add_trial(optuna.trial.create_trial(
                state=state, values=saved["values"], params=saved["params"], distributions=distributions,
                intermediate_values=intermediate))
            continue
        study.enqueue_trial(saved["params"], skip_if_exists=False)
        trial = study.ask(fixed_distributions=searcher._space)
        for step, value in sorted(intermediate.items()):
            trial.report(value, step)
        if saved["number"] in by_number:
            searcher._ot_trials[by_number[saved["number"]]] = trial
    searcher._completed_trials = set(cell["completed"])
    searcher.budgets = {k: int(v) for k, v in cell["budgets"].items()}
    searcher._reported = {k: int(v) for k, v in cell["reported"].items()}
    study.sampler.reseed_rng()  # a restored seed would replay the proposals made before the interruption


def _flatten(params: dict) -> dict[str, Any]:
    return flatten(params, separator="/")


# ----------------------------------------------------------------------------- builders
def _is_optuna(spec) -> bool:
    return spec.file.search.algorithm == "optuna"


def concurrency_limit(spec, cap: Optional[int] = None) -> Optional[int]:
    """How many trials of a phase may run at once: ``search.max_concurrent``, lowered to ``cap`` (data-parallel
    trials: how many the cluster's workers fit); None: no limit. Every phase (a ladder's fine-tunes too) uses it."""
    limits = [c for c in (spec.file.search.max_concurrent, cap) if c]
    return min(limits) if limits else None


def build_search_algorithm(spec, cap: Optional[int] = None):
    """The search algorithm of a space: Ray's BasicVariantGenerator or a :class:`StratifiedOptunaSearch`.

    ``cap`` lowers ``search.max_concurrent`` (data-parallel trials: how many the cluster's workers fit).
    """
    search = spec.file.search
    limit = concurrency_limit(spec, cap)
    if not _is_optuna(spec):
        return BasicVariantGenerator(max_concurrent=limit or 0, random_state=search.seed)
    objectives = getattr(search, "objectives", None)
    if objectives:
        metric: Union[str, list[str]] = list(objectives)
        mode: Union[str, list[str]] = list(search.objective_modes())
    else:
        metric, mode = search.metric, search.mode
    searcher = StratifiedOptunaSearch(
        spec.param_space(), metric=metric, mode=mode, samples_per_cell=search.num_samples,
        sampler=getattr(search, "sampler", "tpe"), seed=search.seed,
        startup_trials=getattr(search, "startup_trials", None),
    )
    if limit:
        return ConcurrencyLimiter(searcher, max_concurrent=limit)
    return searcher


def tuner_param_space(spec) -> dict:
    """What to pass as ``Tuner(param_space=...)``: the space, or ``{}`` when the Optuna search proposes whole configs."""
    return {} if _is_optuna(spec) else spec.param_space()


def tune_num_samples(spec) -> int:
    """``TuneConfig(num_samples=...)``: per grid point for grid/random search, the total for Optuna."""
    return spec.trial_count() if _is_optuna(spec) else spec.file.search.num_samples


__all__ = ["StratifiedOptunaSearch", "PrunedOptunaSearch", "build_search_algorithm", "concurrency_limit", "tuner_param_space",
           "tune_num_samples", "grid_cells", "make_sampler"]
