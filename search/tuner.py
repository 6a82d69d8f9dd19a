"""Ray Tune construction: scheduler, search algorithm, resources, storage and MLflow callback.

``run_search`` starts a new search; ``resume_search`` continues one from its experiment
folder. Both go through :func:`_run`, so a resumed search is built exactly like a new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import yaml

from search import tracking
from search.errors import LicSearchError
from search.schedulers import build_scheduler
from search.searchers import build_search_algorithm, tune_num_samples, tuner_param_space
from search.space import SearchSpec, load_space
from trainables import metrics as M

STATE_FILE = "lic_search.json"
SPACE_COPY = "space.yaml"


@dataclass
class SearchState:
    """What ``resume`` needs, stored beside Ray's own state in the experiment folder."""

    name: str
    tracking_uri: str
    parent_run_id: str
    space_file: str  # the resolved copy inside the experiment folder

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "SearchState":
        path = folder / STATE_FILE
        if not path.is_file():
            raise LicSearchError(f"{folder} is not a lic-search experiment folder (no {STATE_FILE}); "
                                 "pass the folder `lic-search run` printed, e.g. lic_search_results/<name>")
        return cls(**json.loads(path.read_text()))


def _init_ray(address: Optional[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # address "local" starts a fresh single-node cluster even when `ray start` left one running
    # on this machine; joining an existing cluster is what --address is for.
    ray.init(address=address or "local", log_to_driver=True, include_dashboard=False,
             configure_logging=True, logging_level="WARNING")


def _tuner(spec: SearchSpec, experiment_dir: Path, state: SearchState, restore: bool):
    from ray import tune
    from trainables.trainable import train_lic

    resources = spec.file.resources
    trainable = tune.with_resources(train_lic, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
    callback = tracking.MlflowTrialLogger(state.tracking_uri, state.name, state.parent_run_id)
    if restore:
        return tune.Tuner.restore(str(experiment_dir), trainable=trainable, param_space=tuner_param_space(spec),
                                  resume_unfinished=True, resume_errored=True, restart_errored=False)
    run_config = tune.RunConfig(
        name=experiment_dir.name,
        storage_path=str(experiment_dir.parent),
        callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=resources.max_failures),
        # PBT restores clones from other trials' checkpoints: keep a few more of them.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if spec.file.scheduler.type == "pbt" else 2),
        verbose=1,
    )
    tune_config = tune.TuneConfig(
        num_samples=tune_num_samples(spec),
        scheduler=build_scheduler(spec),
        search_alg=build_search_algorithm(spec),
        # Importing torch + CompressAI costs seconds per process: keep trial actors warm.
        reuse_actors=True,
    )
    return tune.Tuner(trainable, param_space=tuner_param_space(spec), tune_config=tune_config, run_config=run_config)


def _run(spec: SearchSpec, experiment_dir: Path, state: SearchState, restore: bool, address: Optional[str]):
    tracking.check_reachable(state.tracking_uri)
    _init_ray(address)
    tuner = _tuner(spec, experiment_dir, state, restore)
    status = "FAILED"
    try:
        results = tuner.fit()
        status = "FINISHED"
        return results
    finally:
        tracking.end_search_run(state.tracking_uri, state.parent_run_id, status)


def run_search(space_path: Path, storage_path: Path, tracking_uri: Optional[str] = None,
               address: Optional[str] = None, name: Optional[str] = None):
    """Validate the space, record the parent run, then run the Tuner. Returns (results, folder)."""
    spec = load_space(space_path)
    if name:
        spec.file.name = name
    tracking_uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_reachable(tracking_uri)
    experiment_dir = (Path(storage_path) / spec.name).resolve()
    if (experiment_dir / STATE_FILE).exists():
        raise LicSearchError(f"{experiment_dir} already holds a search named {spec.name!r}: "
                             f"continue it with `lic-search resume {experiment_dir}` or pass --name")
    experiment_dir.mkdir(parents=True, exist_ok=True)
    space_copy = experiment_dir / SPACE_COPY
    space_copy.write_text(yaml.safe_dump(spec.file.model_dump(mode="json"), sort_keys=False))
    parent = tracking.start_search_run(tracking_uri, spec.name, experiment_dir, space_copy)
    state = SearchState(spec.name, tracking_uri, parent, str(space_copy))
    state.save(experiment_dir)
    return _run(spec, experiment_dir, state, restore=False, address=address), experiment_dir


def resume_search(experiment_dir: Path, address: Optional[str] = None):
    """Continue an interrupted search: finished trials stay, unfinished ones restart from checkpoints."""
    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise LicSearchError(f"{experiment_dir} has no Ray Tune state to restore (was the search started?)")
    spec = load_space(Path(state.space_file))
    return _run(spec, experiment_dir, state, restore=True, address=address), experiment_dir
