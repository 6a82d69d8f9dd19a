"""Queries over a search recorded in MLflow: the best trials and their configs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from search import mlflow_names as T
from search import tracking
from search.errors import LicSearchError
from trainables import metrics as M


def trial_runs(experiment: str, tracking_uri: Optional[str] = None) -> list:
    """All child (trial) runs of the experiment named ``experiment``."""
    client = tracking.client_for(tracking_uri or tracking.default_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LicSearchError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}; "
                             f"experiments there: {', '.join(names) or 'none'}")
    runs = []
    token = None
    while True:
        page = client.search_runs([found.experiment_id], filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_TRIAL}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _summary(run) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "trial_id": run.data.tags.get(T.TAG_TRIAL_ID),
        "status": run.data.tags.get(T.TAG_STATUS),
        "status_detail": run.data.tags.get(T.TAG_STATUS_DETAIL),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
    }


def best_trials(experiment: str, metric: str = M.EVAL_RD_LOSS, mode: str = "min", top: Optional[int] = None,
                tracking_uri: Optional[str] = None, where: Optional[dict[str, str]] = None,
                status: Optional[str] = None) -> list[dict[str, Any]]:
    """Trials ranked by their last value of ``metric``; trials without a finite value come last."""
    rows = [_summary(run) for run in trial_runs(experiment, tracking_uri)]
    if where:
        rows = [r for r in rows if all(r["params"].get(k) == v for k, v in where.items())]
    if status:
        rows = [r for r in rows if r["status"] == status]

    def key(row: dict) -> tuple:
        value = row["metrics"].get(metric)
        missing = value is None or not math.isfinite(value)
        return (missing, 0.0 if missing else (value if mode == "min" else -value))

    rows.sort(key=key)
    return rows[:top] if top else rows


def export_space(experiment: str, run_id: str, target: Path, tracking_uri: Optional[str] = None,
                 iterations: Optional[int] = None) -> Path:
    """Write a space file that trains exactly one trial's config again, at full (or given) budget."""
    import tempfile

    import yaml

    client = tracking.client_for(tracking_uri or tracking.default_tracking_uri())
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run_id, T.ARTIFACT_TRIAL_CONFIG, folder)
        config = yaml.safe_load(Path(local).read_text())
    if iterations:
        config["schedule"]["iterations"] = iterations
    space = {
        "name": f"{experiment}-best",
        "description": f"re-run of MLflow run {run_id} from search {experiment!r}",
        "trial": config,
        "search": {"algorithm": "random", "num_samples": 1},
        "scheduler": {"type": "fifo"},
    }
    target = Path(target)
    target.write_text(yaml.safe_dump(space, sort_keys=False))
    return target
