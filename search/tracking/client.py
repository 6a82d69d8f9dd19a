"""MLflow connection of a search: the tracking URI, a client that gives up fast, the experiment, the parent run.

Trials are recorded by :mod:`search.tracking.trial_logger`; every record goes through the journal first.
"""


from __future__ import annotations

from pathlib import Path
from typing import Optional

from search.errors import TrackingError


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
