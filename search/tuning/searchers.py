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
  (bad or, early in training, misleadingly good) configuration. This search tells Optuna
  PRUNED whenever the trial ended before its budget ``schedule.iterations``; Optuna keeps the
  last intermediate value (reported at step ``iterations``) and TPE ranks pruned trials below
  all complete ones, by how far they got.
* **Optuna's own storage.** The studies live in an Optuna storage (the journal file
  ``optuna_journal.log`` in the experiment folder, or ``search.optuna_storage``), driven through
  Optuna's ask-and-tell API and Ray's public ``Searcher`` hooks, so ``optuna-dashboard`` opens them
  as they are (``lic-search ui --optuna``) and resume continues the same studies.

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

from search.experiment.store import is_uri
from search.experiment.atomic import write_local_text
from search.space.keypath import get_path, set_path
from trainables import metrics as M
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
JOURNAL_FILE = "optuna_journal.log"  # the studies of an Optuna search, in its experiment folder
INDEX_FILE_TMPL = "searcher-state-{}.json"  # which Ray trials Ray's own saved state knows (see save)
RAY_TRIAL_ID = "ray_trial_id"  # the Optuna trial's user attribute naming its Ray trial


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


def open_storage(location: Optional[str]):
    """An Optuna storage: a database URL (``sqlite:///...``, ``postgresql://...``), a journal file path, or
    None for an in-memory one (a searcher used as a library, no experiment folder)."""
    import optuna

    if location is None:
        return optuna.storages.InMemoryStorage()
    if "://" in location:
        return optuna.storages.RDBStorage(location)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(location))


def study_label(cell: dict) -> str:
    """A grid point as a study name shows it: ``loss.lmbda=0.0025, model.auxt={...}``; ``all`` without grids."""
    return ", ".join(f"{key}={json.dumps(value, sort_keys=True)}" for key, value in cell.items()) or "all"


def _directions(mode: Union[str, list[str]]) -> list[str]:
    return [{"min": "minimize", "max": "maximize"}[m] for m in ([mode] if isinstance(mode, str) else mode)]


class StratifiedOptunaSearch(Searcher):
    """One Optuna study per grid point of the space; ``samples_per_cell`` trials each.

    ``space`` is a Ray param space (``tune.grid_search`` and domains, nested dicts). The
    searcher proposes *complete* trial configs, so give Ray ``param_space={}``.

    Built on Ray's public ``Searcher`` interface and Optuna's ask-and-tell API: each study lives in
    ``storage`` (a journal file, usually ``<experiment>/optuna_journal.log``, or an Optuna storage URL),
    named ``<study_prefix>: <grid point>``, and each Optuna trial carries its Ray trial id as the user
    attribute ``ray_trial_id``. A trial stopped before its budget ``schedule.iterations`` is told
    PRUNED (Ray's ``OptunaSearch`` would tell COMPLETE), its intermediate values reported at step
    ``iterations``. Resume reopens the same studies: nothing is rebuilt.
    """

    def __init__(self, space: dict, metric: Union[str, list[str]], mode: Union[str, list[str]],
                 samples_per_cell: int = 1, sampler: str = "tpe", seed: Optional[int] = None,
                 startup_trials: Optional[int] = None, storage: Optional[str] = None,
                 study_prefix: str = "lic-search"):
        super().__init__(metric=metric, mode=mode)
        if samples_per_cell < 1:
            raise ValueError(f"samples_per_cell must be at least 1, got {samples_per_cell}")

        self.samples_per_cell = samples_per_cell
        self.storage = storage
        self.cells: list[dict] = []  # grid assignments of each cell (for display)
        self._configs: list[dict] = []  # each cell's config, grids resolved, domains left in
        self._distributions: list[Optional[dict]] = []  # each cell's Optuna distributions ("a/b" keys); None: fixed
        for assignments, config in grid_cells(copy.deepcopy(space)):
            self.cells.append(assignments)
            self._configs.append(config)
            self._distributions.append(OptunaSearch.convert_search_space(config) if _has_domains(config) else None)
        self.study_names = [f"{study_prefix}: {study_label(cell)}" for cell in self.cells]
        self._sampler = (sampler, seed, startup_trials)
        self._reset()

    def _reset(self) -> None:
        self._studies: Optional[list] = None  # opened on first use: storages and studies are not pickled
        self._counts = [0] * len(self.cells)
        self._trial_cell: dict[str, int] = {}
        self._trial_number: dict[str, int] = {}  # Ray trial id -> Optuna trial number in its cell's study
        self._trial_config: dict[str, dict] = {}
        self._told: set[str] = set()
        self._reported: dict[str, int] = {}  # Ray trial id -> last intermediate step reported
        self._study_ids: dict[int, int] = {}

    def __getstate__(self) -> dict:
        # Ray pickles the searcher into tuner.pkl before the search starts: the studies live in the storage.
        state = self.__dict__.copy()
        state.update(_studies=None, _optuna_storage=None)
        return state

    # ------------------------------------------------------------- studies
    def _open(self) -> list:
        if self._studies is None:
            import optuna

            kind, seed, startup_trials = self._sampler
            self._optuna_storage = open_storage(self.storage)
            self._studies = []
            for index, (name, distributions) in enumerate(zip(self.study_names, self._distributions)):
                if distributions is None:
                    self._studies.append(None)  # nothing to sample at this grid point
                    continue
                study = optuna.create_study(
                    storage=self._optuna_storage, study_name=name, load_if_exists=True,
                    sampler=make_sampler(kind, None if seed is None else seed + index, startup_trials),
                    directions=_directions(self.mode))
                study.set_user_attr("grid_point", json.dumps(self.cells[index], sort_keys=True))
                self._studies.append(study)
        return self._studies

    def studies(self) -> list[tuple[dict, Any]]:
        """(grid assignments, optuna.Study) of every grid point that samples something."""
        return [(cell, study) for cell, study in zip(self.cells, self._open()) if study is not None]

    def _storage_trial_id(self, index: int, number: int) -> int:
        storage = self._optuna_storage
        if index not in self._study_ids:
            self._study_ids[index] = storage.get_study_id_from_name(self.study_names[index])
        return storage.get_trial_id_from_study_id_trial_number(self._study_ids[index], number)

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
        study = self._open()[index]
        params: dict = {}
        if study is not None:
            trial = study.ask(fixed_distributions=self._distributions[index])
            trial.set_user_attr(RAY_TRIAL_ID, trial_id)
            params = trial.params
            self._trial_number[trial_id] = trial.number
        self._counts[index] += 1
        self._trial_cell[trial_id] = index
        self._trial_config[trial_id] = self._config(index, params)
        return copy.deepcopy(self._trial_config[trial_id])

    def _config(self, index: int, params: dict) -> dict:
        config = copy.deepcopy(self._configs[index])
        for dotted, value in params.items():
            set_path(config, tuple(dotted.split("/")), value)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._told and not M.is_notice(result):
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """An intermediate value at step ``iterations`` (single objective only: Optuna keeps none for several)."""
        if isinstance(self.metric, list) or trial_id not in self._trial_number:
            return
        value, step = result.get(self.metric), result.get(M.ITERATIONS)
        if not _finite(value) or not _finite(step) or self._reported.get(trial_id, -1) >= int(step):
            return
        index = self._trial_cell[trial_id]
        self._optuna_storage.set_trial_intermediate_value(
            self._storage_trial_id(index, self._trial_number[trial_id]), int(step), float(value))
        self._reported[trial_id] = int(step)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._told or trial_id not in self._trial_number:
            return
        from optuna.trial import TrialState

        study = self._open()[self._trial_cell[trial_id]]
        number = self._trial_number[trial_id]
        result = result or {}
        self._told.add(trial_id)
        if error or result.get(M.DIVERGED):  # a diverged trial is FAILED, not PRUNED
            study.tell(number, state=TrialState.FAIL)
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        budget = get_path(self._trial_config[trial_id], ("schedule", "iterations"))
        reached = result.get(M.ITERATIONS)
        stopped = budget is not None and _finite(reached) and int(reached) < int(budget)
        if not result or any(v is None for v in values) or stopped:
            self._report(trial_id, result)  # the result that got the trial stopped was not reported yet
            study.tell(number, state=TrialState.PRUNED)  # Optuna keeps the last intermediate value
            return
        study.tell(number, values if isinstance(self.metric, list) else values[0])

    # ----------------------------------------------------------- persistence
    # The studies are in the storage; the checkpoint Ray takes with its experiment state only lists
    # the Ray trials that state knows (JSON, no pickle), so a trial asked after Ray's last save is
    # recognised on resume as never started (told FAIL, not counted).
    CKPT_FILE_TMPL = INDEX_FILE_TMPL

    def save(self, checkpoint_path: str) -> None:
        state = {"version": 2, "storage": self.storage, "studies": self.study_names, "trials": self._trial_cell}
        write_local_text(checkpoint_path, json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as handle:
            saved = json.load(handle)
        if saved.get("version") != 2:
            raise LicSearchError(f"{checkpoint_path}: Optuna searcher state of an older lic-search (version "
                                 f"{saved.get('version')!r}, this one reads 2): finish that search with the "
                                 "version that started it")
        if saved["studies"] != self.study_names:
            raise LicSearchError(f"{checkpoint_path}: the saved search has the studies {saved['studies']}, the space "
                                 f"{self.study_names}; was the space changed?")
        self.reopen(known=saved["trials"])

    def reopen(self, known: Optional[dict] = None) -> None:
        """Continue from the studies in the storage: which Ray trial each Optuna trial is, how many each grid
        point has, what was reported. ``known``: the Ray trials Ray's saved state holds (others never ran)."""
        from optuna.trial import TrialState

        self._reset()
        for index, study in enumerate(self._open()):
            if study is None:
                continue
            study.sampler.reseed_rng()  # a restored seed would replay the proposals made before the interruption
            for trial in study.get_trials(deepcopy=False):
                trial_id = trial.user_attrs.get(RAY_TRIAL_ID)
                if trial_id is None:
                    continue
                if known is not None and trial_id not in known:
                    if trial.state == TrialState.RUNNING:
                        study.tell(trial.number, state=TrialState.FAIL)  # asked after Ray's last save
                    continue
                self._counts[index] += 1
                self._trial_cell[trial_id] = index
                self._trial_number[trial_id] = trial.number
                self._trial_config[trial_id] = self._config(index, trial.params)
                if trial.state.is_finished():
                    self._told.add(trial_id)
                elif trial.intermediate_values:
                    self._reported[trial_id] = max(trial.intermediate_values)
        for trial_id, index in (known or {}).items():  # fixed grid points: no study, the index is all there is
            if self._distributions[int(index)] is None and trial_id not in self._trial_cell:
                self._counts[int(index)] += 1
                self._trial_cell[trial_id] = int(index)
                self._trial_config[trial_id] = self._config(int(index), {})

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        import glob
        import os

        if not glob.glob(os.path.join(checkpoint_dir, self.CKPT_FILE_TMPL.format("*"))):
            logger.warning("no Optuna searcher state (%s) in %s: continuing the studies in %s as they are",
                           self.CKPT_FILE_TMPL.format("*"), checkpoint_dir, self.storage)
            self.reopen()
            return
        super().restore_from_dir(checkpoint_dir)


# ----------------------------------------------------------------------------- builders
def _is_optuna(spec) -> bool:
    return spec.file.search.algorithm == "optuna"


def concurrency_limit(spec, cap: Optional[int] = None) -> Optional[int]:
    """How many trials of a phase may run at once: ``search.max_concurrent``, lowered to ``cap`` (data-parallel
    trials: how many the cluster's workers fit); None: no limit. Every phase (a ladder's fine-tunes too) uses it."""
    limits = [c for c in (spec.file.search.max_concurrent, cap) if c]
    return min(limits) if limits else None


def optuna_storage(spec, folder: Optional[str]) -> Optional[str]:
    """Where an Optuna search keeps its studies: ``search.optuna_storage``, else the journal file in the
    experiment ``folder`` (None: in memory, for a searcher built without a search)."""
    given = getattr(spec.file.search, "optuna_storage", None)
    if given:
        return given
    if folder is None:
        return None
    if is_uri(folder):
        raise LicSearchError(f"search.optuna_storage: the Optuna journal file cannot live in {folder} (Optuna writes "
                             "it with file locks); give an Optuna storage URL (e.g. postgresql://... or "
                             "sqlite:////shared/optuna.db) or a local or mounted --storage-path")
    return f"{folder.rstrip('/')}/{JOURNAL_FILE}"


def build_search_algorithm(spec, cap: Optional[int] = None, folder: Optional[str] = None):
    """The search algorithm of a space: Ray's BasicVariantGenerator or a :class:`StratifiedOptunaSearch`.

    ``cap`` lowers ``search.max_concurrent`` (data-parallel trials: how many the cluster's workers fit);
    ``folder`` is the experiment folder, home of the Optuna journal (:func:`optuna_storage`).
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
        startup_trials=getattr(search, "startup_trials", None), storage=optuna_storage(spec, folder),
        study_prefix=getattr(spec, "name", "lic-search"),
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


__all__ = ["StratifiedOptunaSearch", "build_search_algorithm", "concurrency_limit", "tuner_param_space",
           "tune_num_samples", "grid_cells", "make_sampler", "optuna_storage", "open_storage", "JOURNAL_FILE"]
