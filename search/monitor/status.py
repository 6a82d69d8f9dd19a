"""A search's state read from its experiment folder, from any terminal, while it runs or after.

Sources, all in the experiment folder: ``drivers/`` (one record per driver: pid, host,
start, a heartbeat, and how it ended), Ray's ``experiment_state-*.json`` (each trial's
status, config and folder), each trial folder's ``result.json`` (its latest result), and
lic-search's ``lic_search.json``/``space.yaml`` (name, MLflow store, parent run, space). A
search name is found through MLflow: the latest parent run's ``lic_search.experiment_dir``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from search.bootstrap import table_of
from search.errors import LicSearchError
from search.experiment import ray_state, settled, skipped
from search.experiment.drivers import Driver, read_driver
from search.experiment.ladder_plan import FINE_TUNE_FOLDER, LadderPlan
from search.experiment.state import STATE_FILE, SearchState
from search.experiment.store import ExperimentStore, is_uri
from search.monitor import progress, summary
from search.space.load import load_stored_space
from search.tracking import client as tracking
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking import run_names
from search.tracking import session as tracking_session
from search.tracking.queries import select_search
from trainables import metrics as M


def describe_driver(driver: Driver) -> str:
    """One line on the driver: running, gone, ended (and how), or another host's with its last heartbeat."""
    where = f"pid {driver.pid} on {driver.host}"
    alive = driver.alive()
    if driver.ended is not None:
        return f"driver ended ({driver.outcome or 'unknown outcome'}; {where})"
    if alive is None:
        return f"driver {where}: heartbeat {progress.duration(time.time() - driver.heartbeat)} ago (another host)"
    return f"driver running ({where})" if alive else f"driver gone ({where} is not running)"


# ---------------------------------------------------------------------------------- the search
def _candidates(target: str, storage_path: str) -> list[str]:
    if is_uri(target):
        return [target]
    inside = f"{storage_path.rstrip('/')}/{target}" if is_uri(storage_path) else str(Path(storage_path) / target)
    return [target, inside]


def experiment_folder(target: str, storage_path: str = "lic_search_results") -> Optional[ExperimentStore]:
    """The experiment folder ``target`` names as a path or as ``<storage_path>/<NAME>``; None if neither is one."""

    for candidate in _candidates(target, storage_path):
        store = ExperimentStore(candidate)
        if store.exists(STATE_FILE):
            return store
    return None


def resolve(target: str, tracking_uri: Optional[str] = None, storage_path: str = "lic_search_results") -> ExperimentStore:
    """NAME or PATH -> the experiment folder: a folder as given, ``<storage>/<NAME>``, or the folder
    MLflow's latest search of that name recorded."""

    store = experiment_folder(target, storage_path)
    if store is not None:
        return store
    candidates = _candidates(target, storage_path)

    uri = tracking_uri or tracking.default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise LicSearchError(f"{target!r} is not an experiment folder (no {STATE_FILE}; tried {', '.join(candidates)}) "
                             f"and there is no MLflow store {uri} to look the name up in; pass the folder "
                             "`lic-search run` printed, or --tracking-uri")
    try:
        selection = select_search(target, uri)
        parent = tracking.client_for(selection.tracking_uri).get_run(selection.parent_run_id) \
            if selection.parent_run_id else None
    except LicSearchError as error:
        raise LicSearchError(f"{target!r} is neither an experiment folder (no {STATE_FILE}; tried "
                             f"{', '.join(candidates)}) nor a search name in MLflow: {error}") from None
    folder = parent.data.tags.get(T.TAG_SEARCH_DIR) if parent else None
    if not folder or not ExperimentStore(folder).exists(STATE_FILE):
        raise LicSearchError(f"search {target!r}: MLflow records experiment folder {folder!r}, which has no "
                             f"{STATE_FILE}; pass the folder `lic-search run` printed")
    return ExperimentStore(folder)


def _last_result(phase: ExperimentStore, trial_folder: str) -> dict:
    """The trial's latest scores, at its latest iteration (a notice after them moves only the iteration)."""
    path = f"{trial_folder}/result.json"
    if not trial_folder or not phase.exists(path):
        return {}
    latest = None
    for line in reversed(phase.read_text(path).splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue  # a line being written
        latest = latest or result
        if not M.is_notice(result):
            return result | {M.ITERATIONS: latest.get(M.ITERATIONS, result.get(M.ITERATIONS))}
    return {M.ITERATIONS: latest.get(M.ITERATIONS)} if latest else {}


def load(store: ExperimentStore) -> tuple[progress.SearchView, Optional[Driver], Any]:
    """The search's view, its driver record and its :class:`SearchState`, from the experiment folder."""

    state = SearchState.load(store)
    spec = load_stored_space(store, state.space_file)
    trials = []
    phases = [store, store.child(FINE_TUNE_FOLDER)]  # a ladder's fine-tune phase is its own Ray experiment
    settled_trials = settled.load(phases[1])  # fine-tunes whose rate settled before their cap
    for phase, record in [(phase, record) for phase in phases for record in ray_state.trial_records(phase)]:
        config = record.get("config") or {}
        result = _last_result(phase, record.get("relative_logdir", ""))
        budget = progress.budget_of(config)
        ours = progress.trial_state(record.get("status", "PENDING"), result, budget,
                                    settled=phase is phases[1] and record["trial_id"] in settled_trials)
        trials.append(progress.TrialView(
            trial_id=record["trial_id"], state=ours,
            iteration=int(result.get("iterations", 0) or 0), budget=budget, config=config,
            metrics=progress.numeric(result), seconds=float(result.get("time_total_s", 0.0) or 0.0),
            per_image=table_of(result)))
    driver = read_driver(store)
    resources = spec.file.resources
    gpus = resources.gpus_per_trial > 0
    elapsed = None
    if driver is not None:
        elapsed = (driver.ended or (time.time() if driver.alive() is not False else driver.heartbeat)) - driver.started
    plan = LadderPlan.load(store)
    expected = spec.trial_count() if plan is None else len(plan.families) + len(plan.configs)
    view = progress.SearchView(
        name=state.name, folder=store.location, trials=trials, expected=expected, elapsed=elapsed,
        device="GPU" if gpus else "CPU", per_trial=resources.gpus_per_trial if gpus else resources.cpus_per_trial,
        ranking=summary.Ranking.of(spec.file.search.model_dump(mode="json")),
        keys=run_names.column_keys([*spec.configs(), *(t.config for t in trials)], spec.variants),
        variants=spec.variants, workers=resources.workers_per_trial)
    return view, driver, state


def report(store: ExperimentStore) -> tuple[list[str], dict[str, Any]]:
    """What ``lic-search status`` prints, as lines and as JSON."""
    view, driver, state = load(store)
    alive = driver.alive() if driver is not None else False
    # every trial terminated in Ray's saved state (a ladder's: of both phases)
    ended = ray_state.finished(store, view.expected or 0, (FINE_TUNE_FOLDER,))
    finished = ended is not None or (driver is not None and driver.outcome == "FINISHED")
    resume = None if (alive is not False or finished) else f"lic-search resume {store.location}"
    lines = [f"search {view.name!r} at {view.folder}",
             describe_driver(driver) if driver else "driver: not recorded (a search started before lic-search status)"]
    lines += progress.render(view, max_running=50)
    lines.append(f"MLflow: {state.tracking_uri} (parent run {state.parent_run_id}) · lic-search best {view.name}")
    tracking = sync_tracking(store, state, driver_alive=alive is not False)
    if tracking:
        lines.append(tracking)
    named = skipped.describe(store)
    if named:
        lines.append(named)
    if resume:
        lines.append(f"The driver is gone; continue with: {resume}")
    if ended is not None and alive is False:
        lines.append(f"The search finished: all {ended} trials ended; resuming it trains nothing.")
    data = {**view.to_json(), "driver": asdict(driver) if driver else None, "driver_alive": alive,
            "finished": ended is not None and alive is False,
            "resume_command": resume, "tracking_uri": state.tracking_uri, "parent_run_id": state.parent_run_id,
            "tracking": tracking, "skipped_files": skipped.skipped_files(store)}
    return lines, data


SYNC_SECONDS = 20.0  # status answers promptly; `lic-search sync` ships without a deadline


def sync_tracking(store: ExperimentStore, state, driver_alive: bool, seconds: float = SYNC_SECONDS) -> Optional[str]:
    """Ship what a search's tracking journal still holds when no driver is shipping it (as
    ``lic-search sync`` does, for at most ``seconds``); a line saying what happened, or None."""

    if driver_alive:  # the driver ships its own journal (and may be appending to it right now)
        return None
    try:
        pending = J.Journal(store).pending
    except (OSError, ValueError):
        return None
    if pending == 0:
        return None
    try:
        tracking_session.sync(store, state, time.time() + seconds, notify=lambda _: None)
    except Exception as error:  # noqa: BLE001 - server down or refusing: the journal keeps the records
        return (f"tracking: {J.Journal(store).pending} record(s) not in MLflow ({error.__class__.__name__}); "
                f"ship them with: lic-search sync {store.location}")
    left = J.Journal(store).pending
    shipped = pending - left
    return (f"tracking: shipped {shipped} pending record(s) to {state.tracking_uri}"
            + (f"; {left} left: lic-search sync {store.location}" if left else ""))


__all__ = ["describe_driver", "resolve", "load", "report"]
