"""Ray Tune construction: scheduler, search algorithm, resources, storage and MLflow callback.

``run_search`` starts a new search; ``resume_search`` continues one from its experiment
folder. Both go through :func:`_run`, so a resumed search is built exactly like a new one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from search.errors import LicSearchError
from search.experiment import ray_internals, ray_session, ray_state
from search.experiment.ladder_plan import LadderPlan
from search.experiment.state import SPACE_COPY, STATE_FILE, SearchState
from search.experiment.store import ExperimentStore
from search.experiment.train_index import prepare_train_indexes
from search.monitor import console
from search.space import SearchSpec, load_space
from search.space.keypath import first_difference
from search.space.load import load_stored_space
from search.space.renamed import upgrade_renamed
from search.tracking import client as tracking
from search.tracking import names as T
from search.tracking import run_names
from search.tracking import session as tracking_session
from search.tuning import ladder, state_save
from search.tuning.interrupt import GracefulStop, catch_job_end_again
from search.tuning.resource_check import check_cluster
from search.tuning.schedulers import build_scheduler
from search.tuning.searchers import (
    build_search_algorithm,
    tune_num_samples,
    tuner_param_space,
)

_owned_ray: dict = {"started": False, "address_info": {}}  # this process started the local Ray instance (and must end it)


@dataclass
class SearchOutcome:
    """How a ``run``/``resume`` ended: Ray's results, the experiment folder, and what stopped it unfinished."""

    results: object  # ray.tune.ResultGrid; None when resume found the search finished (nothing trained)
    folder: str
    stopped_by: Optional[str] = None  # "Ctrl-C" or a job-end signal's name: unfinished (search.commands exit codes)

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None


def _init_ray(address: Optional[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if console.ray_verbosity() == 0:
        # Ray 2.60 announces its token authentication at every start; the cluster page (docs/clusters.md)
        # says what to do about tokens, so the quiet console leaves it out (--verbose keeps it).
        logging.getLogger(ray_internals.AUTH_TOKEN_LOGGER).addFilter(
            lambda record: record.levelno >= logging.ERROR)
    # address "local" starts a fresh single-node cluster even when `ray start` left one running
    # on this machine; joining an existing cluster is what --address is for.
    context = ray.init(address=address or "local", log_to_driver=console.ray_verbosity() > 0,
                       include_dashboard=False, configure_logging=True, logging_level="WARNING")
    catch_job_end_again()  # Ray's own SIGTERM handler would abort the driver
    _owned_ray["started"] = address is None
    _owned_ray["address_info"] = dict(context.address_info)  # the session folder of the instance started here


def _start_cluster(spec: SearchSpec, address: Optional[str], file: str) -> None:
    """Start or join Ray, then fail fast if no node can ever run one trial (Ray would wait forever)."""
    import ray


    started = not ray.is_initialized()
    try:
        _init_ray(address)
    except ConnectionError as error:
        raise LicSearchError(f"--address {address}: cannot join the Ray cluster: {error}") from None
    try:
        check_cluster(spec.file.resources, file)
    except LicSearchError:
        if started:
            ray.shutdown()
        raise


@dataclass
class Phase:
    """One Tuner of a search: the whole search, or one phase of a ladder (:mod:`search.tuning.ladder`).

    ``spec`` builds the scheduler and search algorithm, ``store`` is the Ray experiment folder, and
    ``points`` are the explicit trial configs of a ladder's fine-tune phase (None: the space's own)."""

    spec: SearchSpec
    store: ExperimentStore
    points: Optional[list[dict]] = None
    stopper: Optional[object] = None  # a ray.tune Stopper (the ladder's settle rule), or None

    def param_space(self) -> dict:
        return {} if self.points is not None else tuner_param_space(self.spec)


def _tuner(spec: SearchSpec, store: ExperimentStore, phase: Phase, restore: bool, callbacks: list):
    from ray import tune

    from trainables.training.indexed_trainable import train_lic_indexed

    resources = spec.file.resources
    # The training file lists, built once by the driver (kept as they are on resume).
    indexes = prepare_train_indexes(spec, store)
    if resources.workers_per_trial > 1:
        from search.tuning.worker_groups import WorkerGroupReaper, start_registry

        reaper = WorkerGroupReaper(start_registry())
        callbacks = [*callbacks, reaper]
        console.name_raylet_lines(reaper.trial_process)  # Ray's lines about a worker that died name its trial
        trainable = _data_parallel_trainable(spec, store, indexes, reaper.registry)
    else:
        trainable = tune.with_parameters(train_lic_indexed, train_indexes=indexes)
        trainable = tune.with_resources(trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
    if restore:
        tuner = tune.Tuner.restore(phase.store.location, trainable=trainable, param_space=phase.param_space(),
                                   resume_unfinished=True, resume_errored=True, restart_errored=False)
        # The restored RunConfig holds the callbacks as pickled then: this driver's take their place.
        run_config = ray_internals.restored_run_config(tuner)
        ours = tuple(type(c) for c in callbacks)
        run_config.callbacks = [c for c in run_config.callbacks or [] if not isinstance(c, ours)] + callbacks
        run_config.verbose = console.ray_verbosity()  # this driver's --verbose, not the first one's
        run_config.stop = phase.stopper  # this driver's stopper (and its record of why trials stopped)
        return tuner
    run_config = tune.RunConfig(
        name=phase.store.name,
        storage_path=phase.store.parent,
        callbacks=callbacks,
        stop=phase.stopper,
        failure_config=tune.FailureConfig(max_failures=resources.max_failures),
        # PBT restores clones from other trials' checkpoints: keep a few more of them.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if spec.file.scheduler.type == "pbt" else 2),
        verbose=console.ray_verbosity(),  # Ray's boxes only with --verbose (search.monitor.console)
    )
    data_parallel = resources.workers_per_trial > 1
    cap = _concurrent_data_parallel_trials(spec) if data_parallel else None  # every phase, fine-tunes too
    tune_config = tune.TuneConfig(
        num_samples=len(phase.points) if phase.points is not None else tune_num_samples(phase.spec),
        scheduler=build_scheduler(phase.spec),
        # Tune sees only the coordinators of data-parallel trials: start no more than their workers fit.
        search_alg=(ladder.search_algorithm(phase.spec, phase.points, cap) if phase.points is not None
                    else build_search_algorithm(phase.spec, cap, folder=phase.store.location)),
        # Importing torch + CompressAI costs seconds per process: keep trial actors warm. A data-parallel
        # trial's actor only coordinates (its workers are new processes each time): end it with the trial.
        reuse_actors=not data_parallel,
    )
    return tune.Tuner(trainable, param_space=phase.param_space(), tune_config=tune_config, run_config=run_config)


def run_params(spec: SearchSpec) -> dict[str, str]:
    """MLflow params every trial run gets beside its config: how the trial was laid out."""
    return {"resources.workers_per_trial": str(spec.file.resources.workers_per_trial)}


def _data_parallel_trainable(spec: SearchSpec, store: ExperimentStore, indexes, registry):
    """The coordinator trainable of a data-parallel trial (Ray Train V2 inside Tune) and its tiny reservation."""
    from ray import tune

    from search.tuning.worker_groups import worker_group
    from trainables.training.data_parallel_trainable import COORDINATOR_CPUS, train_lic_data_parallel

    trainable = tune.with_parameters(train_lic_data_parallel, train_indexes=indexes, registry=registry,
                                     group=worker_group(spec.file.resources), storage=f"{store.location}/train_runs")
    return tune.with_resources(trainable, {"cpu": COORDINATOR_CPUS})


def _concurrent_data_parallel_trials(spec: SearchSpec) -> int:
    import ray

    from search.tuning.resource_check import concurrent_trials
    from search.tuning.worker_groups import worker_group

    group = worker_group(spec.file.resources)
    return concurrent_trials(group.workers, group.worker_resources(), ray.nodes())


def _run(spec: SearchSpec, store: ExperimentStore, state: SearchState, restore: bool, address: Optional[str],
         offline: bool = False, flush_seconds: float = tracking_session.DEFAULT_FLUSH_SECONDS):

    if tracking_session.reachable(state.tracking_uri, offline, notify=lambda message: None):
        tracking_session.sync(store, state)  # what an earlier driver could not ship goes first
    _init_ray(address)
    console.shorten_ray_logs()
    state_save.install()  # each experiment-state save waits for the previous upload; the last is checked
    if _owned_ray["started"]:
        session = ray_session.current_local_session(_owned_ray["address_info"])
        if session is not None:
            ray_session.record(store, session)
    recorder = tracking_session.TrackingSession(store, state, variants=spec.variants,
                                                name_keys=run_names.column_keys(spec.configs(), spec.variants),
                                                stratify_by=spec.stratify_by(), flush_seconds=flush_seconds,
                                                run_params=run_params(spec))
    stop = GracefulStop()
    status = "FAILED"
    recorder.start()
    installed = stop.install()
    try:
        if spec.file.ladder is None:
            tuner = _tuner(spec, store, Phase(spec, store), restore,
                           [recorder.logger, stop, *console.callbacks(spec, store)])
            results = tuner.fit()
        else:
            results = _run_ladder(spec, store, restore, recorder, stop)
        status = "KILLED" if stop.requested else "FINISHED"
        if stop.requested:
            print(f"\nlic-search: search stopped by {stop.stopped_by}; continue it with: lic-search resume {store}")
        return SearchOutcome(results, store.location, stopped_by=stop.stopped_by)
    finally:
        if installed:
            stop.uninstall()
        recorder.close(status)


def _run_ladder(spec: SearchSpec, store: ExperimentStore, restore: bool, recorder, stop) -> list:
    """The start phase (unless ``ladder.json`` says it ended), then the fine-tune phase; all results."""
    from ray import tune

    plan = LadderPlan.load(store)
    starts = Phase(ladder.start_spec(spec), store)
    results: list = []
    if plan is None:
        recorder.logger.ladder_role = T.LADDER_START
        results = list(_tuner(spec, store, starts, restore, [recorder.logger, stop,
                                                              *console.callbacks(starts.spec, store)]).fit())
        if stop.requested:
            return results
        plan = ladder.plan(spec, results, recorder.logger.run_ids(), store)
        plan.save(store)
        restore = False  # the fine-tune phase starts now
    else:
        results = list(_phase_results(starts))
    phase_store = ladder.phase_store(store)
    fine_tunes = Phase(ladder.fine_tune_spec(spec), phase_store, plan.configs, ladder.settle_stopper(spec, phase_store))
    started = restore and tune.Tuner.can_restore(fine_tunes.store.location)
    print(f"ladder: {sum(bool(f.checkpoint) for f in plan.families)} of {len(plan.families)} rate families "
          f"fine-tune {len(plan.configs)} trials from their start points", *plan.lines(), sep="\n")
    if not plan.configs:
        return results
    recorder.logger.ladder_role = T.LADDER_FINE_TUNE
    recorder.logger.ladder_plan = plan
    reasons = fine_tunes.stopper.reasons if fine_tunes.stopper is not None else {}
    recorder.logger.stop_reasons = reasons
    tuner = _tuner(spec, store, fine_tunes, started,
                   [recorder.logger, stop, *console.callbacks(fine_tunes.spec, store, plan.configs, reasons)])
    return results + list(tuner.fit())


def _phase_results(phase: Phase) -> list:
    """A finished phase's results, read back from its Ray experiment folder (no trial runs)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return list(ResultGrid(ExperimentAnalysis(phase.store.location)))


def _end_ray(store: Optional[ExperimentStore]) -> None:
    """Every exit of run/resume: end the local Ray instance this process started, all its processes."""
    if _owned_ray["started"]:
        _owned_ray["started"] = False
        ray_session.shutdown(store, ray_session.load(store) if store is not None else None)


def run_search(space_path: Path, storage_path: str | Path, tracking_uri: Optional[str] = None,
               address: Optional[str] = None, name: Optional[str] = None, tracking_offline: bool = False,
               flush_seconds: float = tracking_session.DEFAULT_FLUSH_SECONDS, resume_if_exists: bool = False):
    """Validate the space, record the parent run, then run the Tuner.

    ``resume_if_exists``: a search of that name already in ``storage_path`` is continued (or reported finished)
    instead of refused, provided its stored space is this one: the line a requeued batch job runs each time."""
    from trainables.data.file_index import remembered_walks

    store = None
    try:
        with remembered_walks():  # validation's walk of the training folders is the one the index uses
            spec = load_space(space_path)
            if name:
                spec.file.name = name
            existing = ExperimentStore.under(storage_path, spec.name)
            if resume_if_exists and existing.exists(STATE_FILE):
                check_same_space(spec, space_path, existing)
                print(f"lic-search: {existing} holds search {spec.name!r}: continuing it")
                return resume_search(existing.location, address=address, tracking_offline=tracking_offline,
                                     flush_seconds=flush_seconds)
            if address is None:
                ray_session.end_leftovers_near(existing)
            store, state = _prepare_search(spec, space_path, storage_path, tracking_uri, address, name,
                                           tracking_offline)
        return _run(spec, store, state, restore=False, address=address, offline=tracking_offline,
                    flush_seconds=flush_seconds)
    finally:
        _end_ray(store)


def space_text(spec: SearchSpec) -> str:
    """The resolved space as the experiment folder stores it (``space.yaml``)."""
    return yaml.safe_dump(spec.file.model_dump(mode="json"), sort_keys=False)


def check_same_space(spec: SearchSpec, space_path: Path, store: ExperimentStore) -> None:
    """Refuse to continue a stored search with another space: name the first key that differs."""
    state = SearchState.load(store)
    stored = yaml.safe_load(store.read_text(state.space_file)) or {}
    upgrade_renamed(stored)  # a copy stored before search.anchor/ladder.anchor were renamed matches the new names
    differs = first_difference(stored, yaml.safe_load(space_text(spec)))
    if differs is not None:
        raise LicSearchError(f"{space_path}: {differs}: differs from the space of the search stored in {store} "
                             f"({state.space_file}); continuing needs the same space: restore it, or pass another "
                             f"--name or --storage-path to start a new search")


def _prepare_search(spec: SearchSpec, space_path: Path, storage_path: str | Path, tracking_uri: Optional[str],
                    address: Optional[str], name: Optional[str],
                    tracking_offline: bool = False) -> tuple[ExperimentStore, SearchState]:
    """Everything before ``Tuner.fit``: cluster check, experiment folder, training index, parent run."""
    if name:
        spec.file.name = name
    tracking_uri = tracking_uri or tracking.default_tracking_uri()
    online = tracking_session.reachable(tracking_uri, tracking_offline)
    store = ExperimentStore.under(storage_path, spec.name)
    if store.exists(STATE_FILE):
        raise LicSearchError(f"{store} already holds a search named {spec.name!r}: "
                             f"continue it with `lic-search resume {store}` or pass --name")
    _start_cluster(spec, address, str(space_path))
    store.create()
    prepare_train_indexes(spec, store)
    text = space_text(spec)
    store.write_text(SPACE_COPY, text)
    state = SearchState(spec.name, tracking_uri, "")
    state.save(store)
    # The parent run goes through the journal like every MLflow record: online it is shipped now (its id
    # lands in the state file); --tracking-offline leaves it to the sender, when the server answers.
    search = spec.file.search
    tracking_session.journal_search_run(store, spec.name, text, spec.stratify_by(), spec.baseline_label(),
                                        spec.variants.labels(),
                                        list(zip(search.objectives or [], search.objective_modes())))
    if online:
        tracking_session.sync(store, state, notify=lambda message: None)
    return store, state


def resume_search(experiment_dir: str | Path, address: Optional[str] = None, tracking_offline: bool = False,
                  flush_seconds: float = tracking_session.DEFAULT_FLUSH_SECONDS):
    """Continue an interrupted search: finished trials stay, unfinished ones go on from checkpoints.

    A search whose saved state has every trial terminated is left alone (``results`` None): nothing to train."""
    store = ExperimentStore(experiment_dir)
    state = SearchState.load(store)
    from ray import tune

    restore = tune.Tuner.can_restore(store.location)
    if not restore:  # the driver ended between recording the search and Ray's first save: nothing trained yet
        print(f"lic-search: {store} has no Ray Tune state yet (its driver ended before training): starting its "
              f"trials")
    spec = load_stored_space(store, state.space_file)
    # An unreachable server is an error before Ray starts, unless --tracking-offline.
    online = tracking_session.reachable(state.tracking_uri, tracking_offline)
    # (a ladder's two phases are two Ray experiments: its resume goes through Ray, which knows both)
    done = ray_state.finished(store, spec.trial_count()) if spec.file.ladder is None else None
    if done is not None:
        if online:
            tracking_session.sync(store, state)  # what the last driver could not ship
        print(f"search {state.name!r} finished: all {done} trials ended (lic-search status {store}); resume has "
              f"nothing to train. Results: lic-search best {state.name}")
        return SearchOutcome(None, store.location)
    if address is None:
        ray_session.end_leftovers_near(store)
    try:
        _start_cluster(spec, address, f"{store}/{state.space_file}")
        return _run(spec, store, state, restore=restore, address=address, offline=tracking_offline,
                    flush_seconds=flush_seconds)
    finally:
        _end_ray(store)
