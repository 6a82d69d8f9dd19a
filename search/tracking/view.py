"""The MLflow UI's view of one search: its trials grouped by rate point, the columns that matter, best first.

MLflow 3 opens an experiment in its GenAI mode with the runs folded under their parent and no metric
columns. Its UI offers two things we use instead of anything hand-rolled:

- ``?workflowType=machine_learning`` in the URL selects the "Model training" mode (runs table);
- a *saved view*: an experiment tag ``mlflow.sharedViewState.<key>`` holding the envelope
  ``{"name", "createdAt", "updatedAt", "state"}`` whose ``state`` is the page state as JSON (search
  facets: filter and sorting; UI state: columns, "Group by"). ``?viewStateShareKey=<key>`` opens it,
  and the UI's "Views" menu lists it by name. (MLflow ignores the view when the URL also carries
  facet parameters such as ``searchFilter``, so everything goes into the view.)

Each trial run carries its rate point as a tag (:data:`search.tracking.names.TAG_RATE_POINT`); the
view groups by it, so trials are compared only within a rate point, as ``best`` does.
"""

from __future__ import annotations

import datetime
import json
from typing import Optional, Sequence
from urllib.parse import urlencode

from search.tracking import names as T
from search.tracking.filters import quoted
from trainables import metrics as M

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI: EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX
VIEW_URL_PARAM = "viewStateShareKey"  # MLflow UI: EXPERIMENT_PAGE_VIEW_STATE_SHARE_URL_PARAM_KEY
SHOWN_METRICS = (M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR, M.EVAL_MS_SSIM, M.ITERATIONS)
SHOWN_TAGS = (T.TAG_STATUS, T.TAG_STATUS_DETAIL)
LOCAL_UI = "http://127.0.0.1:5000"  # where `lic-search ui` serves a local store by default


def view_key(parent_run_id: str) -> str:
    """The view's id in URLs and in its tag name: one view per search (parent run)."""
    return f"lic-search-{parent_run_id}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # MLflow UI: makeCanonicalSortKey


def view_state(parent_run_id: str, metric: str = M.EVAL_RD_LOSS, mode: str = "min",
               param_keys: Sequence[str] = ()) -> dict:
    """The page state: this search's trials, grouped by rate point (each group shows its best ``metric``),
    sorted by ``metric`` best first, with the metrics, the status and the varying params as columns."""
    metrics = list(dict.fromkeys((metric, *SHOWN_METRICS)))
    return {
        "searchFilter": f"tags.`{T.TAG_PARENT}` = {quoted(parent_run_id)}",
        "orderByKey": _column("metrics", metric),
        "orderByAsc": mode == "min",
        "selectedColumns": [*(_column("metrics", m) for m in metrics), *(_column("tags", t) for t in SHOWN_TAGS),
                            *(_column("params", p) for p in param_keys)],
        "groupBy": {"aggregateFunction": "min" if mode == "min" else "max",
                    "groupByKeys": [{"mode": "tag", "groupByData": T.TAG_RATE_POINT}]},
        "groupsExpanded": {},
    }


def view_tag(search_name: str, parent_run_id: str, created_ms: int, metric: str = M.EVAL_RD_LOSS,
             mode: str = "min", param_keys: Sequence[str] = ()) -> tuple[str, str]:
    """The experiment tag (key, value) that saves the view, named for the UI's "Views" menu."""
    started = datetime.datetime.fromtimestamp(created_ms / 1000).strftime("%Y-%m-%d %H:%M")
    name = f"lic-search {search_name}: trials by rate point ({started})"
    state = json.dumps(view_state(parent_run_id, metric, mode, param_keys), ensure_ascii=False)
    envelope = {"name": name, "createdAt": created_ms, "updatedAt": created_ms, "state": state}
    return VIEW_TAG_PREFIX + view_key(parent_run_id), json.dumps(envelope, ensure_ascii=False)


def ui_base(tracking_uri: str, port: Optional[int] = None) -> str:
    """Where the UI of ``tracking_uri`` is: the server itself, or `lic-search ui` on the loopback for a local store."""
    if tracking_uri.startswith(("http://", "https://")) and port is None:
        return tracking_uri.rstrip("/")
    return LOCAL_UI if port is None else f"http://127.0.0.1:{port}"


def runs_url(base: str, experiment_id: str, parent_run_id: Optional[str] = None) -> str:
    """The experiment's runs table in Model-training mode, opened on the search's view when there is one."""
    query = {"workflowType": "machine_learning"}
    if parent_run_id:
        query[VIEW_URL_PARAM] = view_key(parent_run_id)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"
