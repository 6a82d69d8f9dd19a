"""MLflow recording of a search: one parent run per search, one child run per trial.

Logging happens on the Ray driver through a Tune callback, so trials on other nodes need no
access to the tracking server. The callback is idempotent across ``lic-search resume``: a
trial's child run is found again by its ``lic_search.trial_id`` tag and its metric history
continues where MLflow has it (steps already logged are not logged twice).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from ray import tune

from search import mlflow_names as T
from search.errors import TrackingError
from search.families import family_key
from trainables import metrics as M
from trainables.config import flatten


def default_tracking_uri(workdir: Optional[Path] = None) -> str:
    """A SQLite store in the working directory: exactly what a plain ``mlflow ui`` there opens."""
    return f"sqlite:///{(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


def client_for(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def check_reachable(tracking_uri: str) -> None:
    """Fail fast, before Ray starts, when a tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        response = requests.get(tracking_uri.rstrip("/") + "/health", timeout=5)
    except requests.RequestException as error:
        raise TrackingError(f"MLflow tracking server {tracking_uri} is unreachable: {error.__class__.__name__}: "
                            f"{error}. Start it (mlflow server ...) or pass another --tracking-uri.") from None
    if response.status_code != 200:
        raise TrackingError(f"MLflow tracking server {tracking_uri} answered /health with HTTP "
                            f"{response.status_code}; is it an MLflow server?")


def ensure_experiment(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name)


def start_search_run(tracking_uri: str, experiment: str, experiment_dir: str, space_file: Path) -> str:
    """Create (or find again) the parent run of a search; returns its run id."""
    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(client, experiment)
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}' and tags.`{T.TAG_SEARCH_DIR}` = '{experiment_dir}'",
        max_results=1,
    )
    if existing:
        return existing[0].info.run_id
    run = client.create_run(experiment_id, run_name=experiment,
                            tags={T.TAG_ROLE: T.ROLE_SEARCH, T.TAG_SEARCH_DIR: str(experiment_dir)})
    client.log_artifact(run.info.run_id, str(space_file))
    return run.info.run_id


def end_search_run(tracking_uri: str, run_id: str, status: str) -> None:
    client_for(tracking_uri).set_terminated(run_id, status=status)


def auxt_tag(config: dict) -> str:
    auxt = config.get("model", {}).get("auxt", {})
    return auxt.get("placement", "both") if auxt.get("enabled") else "off"


def _param_value(value: Any) -> str:
    return str(value)[:6000]


class MlflowTrialLogger(tune.Callback):
    """Ray Tune callback writing each trial to its own child run."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self._client = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._last_iteration: dict[str, int] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _last_step={}, _last_iteration={})
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------ run lookup
    def _run_id(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        experiment_id = ensure_experiment(self.client, self.experiment)
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{T.TAG_TRIAL_ID}` = '{trial_id}' and tags.`{T.TAG_PARENT}` = '{self.parent_run_id}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, M.ITERATIONS)
            self._last_step[trial_id] = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create_run(trial, experiment_id)
            self._last_step[trial_id] = 0
        self._runs[trial_id] = run_id
        return run_id

    def _create_run(self, trial, experiment_id: str) -> str:
        config = trial.config
        tags = {
            T.TAG_PARENT: self.parent_run_id,
            T.TAG_ROLE: T.ROLE_TRIAL,
            T.TAG_TRIAL_ID: trial.trial_id,
            T.TAG_BACKBONE: str(config.get("model", {}).get("backbone", "")),
            T.TAG_AUXT: auxt_tag(config),
            T.TAG_STATUS: T.STATUS_RUNNING,
            T.TAG_FAMILY: family_key(config),
        }
        run = self.client.create_run(experiment_id, run_name=str(trial), tags=tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, _param_value(v)) for k, v in sorted(flatten(config).items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start:start + 100])
        self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), T.ARTIFACT_TRIAL_CONFIG)
        return run_id

    # ----------------------------------------------------------------- hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self._run_id(trial)
        step = int(result.get(M.ITERATIONS, 0))
        self._last_iteration[trial.trial_id] = max(step, self._last_iteration.get(trial.trial_id, 0))
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # already in MLflow from before a resume: the restored trial recomputed it exactly
        now = int(time.time() * 1000)
        values = [Metric(key, float(value), now, step) for key, value in result.items()
                  if (key == M.ITERATIONS or key.startswith(("eval/", "train/")))
                  and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(run_id, metrics=values)
        self._last_step[trial.trial_id] = step
        if M.NODE_ID in result:
            self.client.set_tag(run_id, T.TAG_NODE, str(result[M.NODE_ID]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        budget = int(trial.config.get("schedule", {}).get("iterations", 0))
        reached = self._last_iteration.get(trial.trial_id) or int((trial.last_result or {}).get(M.ITERATIONS, 0))
        if reached and reached < budget:
            status, detail = T.STATUS_STOPPED, f"stopped by the scheduler at iteration {reached} of {budget}"
        else:
            status, detail = T.STATUS_COMPLETED, f"completed {reached} iterations"
        self.client.set_tag(run_id, T.TAG_STATUS, status)
        self.client.set_tag(run_id, T.TAG_STATUS_DETAIL, detail)
        self.client.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        reason = _error_summary(trial)
        self.client.set_tag(run_id, T.TAG_STATUS, T.STATUS_ERRORED)
        self.client.set_tag(run_id, T.TAG_STATUS_DETAIL, reason[:5000])
        self.client.set_terminated(run_id, status="FAILED")


def _error_summary(trial) -> str:
    """The last line of the trial's error (e.g. 'TrainingDivergedError: non-finite loss at ...')."""
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.exists(error_file):
        text = Path(error_file).read_text()
    if not text:
        text = str(getattr(trial, "error_msg", "") or "errored")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line
    return lines[-1] if lines else "errored"
