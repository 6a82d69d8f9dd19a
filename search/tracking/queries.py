"""Queries over a search recorded in MLflow: which search, its trials, the best per rate point.

A search is one MLflow parent run (``lic_search.role = search``) in the experiment named after
it; trial runs point at it with ``mlflow.parentRunId``. Two searches with one name (another
``--storage-path``, a deleted results folder) share the experiment, so readers pick one parent
run, the latest by default, and never mix the trials of different searches.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from search.errors import LicSearchError
from search.space.sections import DEFAULT_STRATIFY_BY, default_mode
from search.space.strata import (
    parse_param,
    pareto_within_strata,
    rank_within_strata,
    stratum_label,
    stratum_of,
    typed_params,
)
from search.tracking import client as tracking
from search.tracking import names as T
from search.tracking import view
from search.tracking.filters import tags_filter
from trainables import metrics as M


@dataclass(frozen=True)
class SearchSelection:
    """The runs a reader reads: one search (a parent run), or every search of the name (``--all``)."""

    experiment: str
    experiment_id: str
    tracking_uri: str
    parent_run_ids: tuple[str, ...]  # the selected searches; empty when the experiment has no parent run
    stratify_by: tuple[str, ...]
    searches: int  # parent runs of this name in the store
    everything: bool = False  # --all: every trial run of the experiment, with or without a parent
    baseline: Optional[str] = None  # the baseline variant's label the searches recorded (one, or None)
    variants: tuple[str, ...] = ()  # the variant labels in the space's order (the first search's)
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of a multi-objective search (the first's)

    @property
    def parent_run_id(self) -> Optional[str]:
        """The one selected search's parent run (None with ``--all``)."""
        return None if self.everything or len(self.parent_run_ids) != 1 else self.parent_run_ids[0]

    def describe(self) -> str:
        """One line saying which runs were read (printed by ``best`` and ``report``)."""
        if self.everything:
            return (f"reading every search named {self.experiment!r} ({self.searches} parent runs) "
                    f"at {self.tracking_uri}")
        if not self.parent_run_ids:
            return f"reading search {self.experiment!r} at {self.tracking_uri} (no parent run recorded)"
        others = self.searches - 1
        more = (f"; {others} earlier search{'es' if others > 1 else ''} of this name: pass --run-id PARENT or --all"
                if others > 0 else "")
        return f"reading search {self.experiment!r}, parent run {self.parent_run_ids[0]}{more}"


def _experiment(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LicSearchError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}; "
                             f"experiments there: {', '.join(names) or 'none'}")
    return found


def _all_pages(client, experiment_id: str, filter_string: str, order_by: Optional[list[str]] = None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _stratify_by(parents: Sequence) -> tuple[str, ...]:
    """The stratify keys the searches recorded (their union, in order); the default for older runs."""
    keys: list[str] = []
    for run in parents:
        text = run.data.tags.get(T.TAG_STRATIFY_BY)
        recorded = json.loads(text) if text else list(DEFAULT_STRATIFY_BY)
        keys += [k for k in recorded if k not in keys]
    return tuple(keys) if parents else DEFAULT_STRATIFY_BY


def _baseline(parents: Sequence) -> Optional[str]:
    """The baseline label the searches recorded, when they agree on one (``search.baseline``; a search
    started before the rename recorded it under the old tag)."""
    labels = {run.data.tags.get(T.TAG_BASELINE, run.data.tags.get(T.TAG_BASELINE_OLD)) for run in parents}
    return labels.pop() if len(labels) == 1 else None


def _variants(parents: Sequence) -> tuple[str, ...]:
    labels: list[str] = []
    for run in parents:
        text = run.data.tags.get(T.TAG_VARIANTS)
        labels += [label for label in (json.loads(text) if text else []) if label not in labels]
    return tuple(labels)


def _objectives(parents: Sequence) -> tuple[tuple[str, str], ...]:
    for run in parents:
        text = run.data.tags.get(T.TAG_OBJECTIVES)
        if text:
            return tuple((str(metric), str(mode)) for metric, mode in json.loads(text))
    return ()


def select_search(experiment: str, tracking_uri: Optional[str] = None, run_id: Optional[str] = None,
                  all_searches: bool = False) -> SearchSelection:
    """The latest search named ``experiment``, the one whose parent run is ``run_id``, or all of them."""
    uri = tracking_uri or tracking.default_tracking_uri()
    client = tracking.client_for(uri)
    found = _experiment(client, experiment)
    parents = _all_pages(client, found.experiment_id, tags_filter({T.TAG_ROLE: T.ROLE_SEARCH}),
                         order_by=["attributes.start_time DESC"])
    if all_searches:
        return SearchSelection(experiment, found.experiment_id, uri, tuple(p.info.run_id for p in parents),
                               _stratify_by(parents), len(parents), everything=True, baseline=_baseline(parents),
                               variants=_variants(parents), objectives=_objectives(parents))
    if run_id is not None:
        chosen = [p for p in parents if p.info.run_id == run_id]
        if not chosen:
            listed = ", ".join(f"{p.info.run_id} ({_started(p)})" for p in parents) or "none"
            raise LicSearchError(f"--run-id {run_id}: not a search (parent run) of {experiment!r} at {uri}; "
                                 f"its searches, latest first: {listed}")
    else:
        chosen = parents[:1]
    return SearchSelection(experiment, found.experiment_id, uri, tuple(p.info.run_id for p in chosen),
                           _stratify_by(chosen), len(parents), baseline=_baseline(chosen), variants=_variants(chosen),
                           objectives=_objectives(chosen))


def latest_search(tracking_uri: Optional[str] = None) -> Optional[SearchSelection]:
    """The search (parent run) started last in the store, of any name; None in a store without one."""
    uri = tracking_uri or tracking.default_tracking_uri()
    client = tracking.client_for(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    latest = client.search_runs(experiments, filter_string=tags_filter({T.TAG_ROLE: T.ROLE_SEARCH}),
                                max_results=1, order_by=["attributes.start_time DESC"])
    if not latest:
        return None
    return select_search(client.get_experiment(latest[0].info.experiment_id).name, uri, latest[0].info.run_id)


def ensure_view(selection: SearchSelection) -> None:
    """The selected search's saved MLflow UI view (:mod:`search.tracking.view`), written when the experiment has
    none for it yet: a running search, or one recorded before views existed (the end-of-search summary writes
    it with the search's own metric and mode; this one ranks by the default, eval/rd_loss)."""
    parent = selection.parent_run_id
    if parent is None:
        return
    client = tracking.client_for(selection.tracking_uri)
    key, _ = view.view_tag(selection.experiment, parent, 0)
    if key in client.get_experiment(selection.experiment_id).tags:
        return
    runs = trial_runs(selection.experiment, selection=selection)
    for run in runs:  # trials recorded before runs carried their rate point: the view groups by it
        if T.TAG_RATE_POINT not in run.data.tags:
            stratum = stratum_of(typed_params(run.data.params), selection.stratify_by)
            client.set_tag(run.info.run_id, T.TAG_RATE_POINT, stratum_label(stratum))
    keys = sorted({k for run in runs for k in run.data.params})
    varying = [k for k in keys if len({run.data.params.get(k) for run in runs}) > 1]
    started = client.get_run(parent).info.start_time
    client.set_experiment_tag(selection.experiment_id,
                              *view.view_tag(selection.experiment, parent, started, param_keys=varying))


def _started(run) -> str:
    return datetime.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")


def trial_runs(experiment: str, tracking_uri: Optional[str] = None,
               selection: Optional[SearchSelection] = None) -> list:
    """The trial runs of one search (``selection``; default: the latest search of that name)."""
    selection = selection or select_search(experiment, tracking_uri)
    client = tracking.client_for(selection.tracking_uri)
    trials = {T.TAG_ROLE: T.ROLE_TRIAL}
    if selection.everything or not selection.parent_run_ids:
        return _all_pages(client, selection.experiment_id, tags_filter(trials))
    return [run for parent in selection.parent_run_ids
            for run in _all_pages(client, selection.experiment_id, tags_filter({**trials, T.TAG_PARENT: parent}))]


def _summary(run, stratify_by: Sequence[str]) -> dict[str, Any]:
    params = typed_params(run.data.params)
    return {
        "run_id": run.info.run_id,
        "parent_run_id": run.data.tags.get(T.TAG_PARENT),
        "trial_id": run.data.tags.get(T.TAG_TRIAL_ID),
        "status": run.data.tags.get(T.TAG_STATUS),
        "status_detail": run.data.tags.get(T.TAG_STATUS_DETAIL),
        "family": run.data.tags.get(T.TAG_FAMILY),
        "variant": run.data.tags.get(T.TAG_VARIANT),
        "stratum": stratum_of(params, stratify_by),
        "params": params,
        "metrics": dict(run.data.metrics),
    }


def _matches(params: dict[str, Any], where: dict[str, str]) -> bool:
    """``--where KEY=VALUE``: the typed param equals the parsed VALUE (``True``, ``0.013``) or its text."""
    return all(key in params and (params[key] == parse_param(text) or str(params[key]) == text)
               for key, text in where.items())


def best_trials(experiment: str, metric: str = M.EVAL_RD_LOSS, mode: Optional[str] = None, top: Optional[int] = None,
                tracking_uri: Optional[str] = None, where: Optional[dict[str, str]] = None,
                status: Optional[str] = None, selection: Optional[SearchSelection] = None,
                objectives: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """Trials ranked by their last value of ``metric`` *within their rate point* (stratum).

    A flat list grouped by stratum (natural order of the stratify values), best first inside
    each; every row has ``stratum`` and ``rank`` (1 = best of its stratum; None without a finite
    value). ``top`` keeps the best ``top`` of every stratum. With ``objectives`` ((metric, mode) pairs)
    ``rank`` is the row's Pareto front instead (1 = on its rate point's front; ``top`` keeps that many
    fronts), see :func:`search.space.strata.pareto_within_strata`.
    """
    selection = selection or select_search(experiment, tracking_uri)
    mode = mode or default_mode(metric)
    rows = [_summary(run, selection.stratify_by) for run in trial_runs(experiment, selection=selection)]
    if where:
        rows = [r for r in rows if _matches(r["params"], where)]
    if status:
        rows = [r for r in rows if r["status"] == status]
    ranked = []
    if objectives:
        ordered = pareto_within_strata(rows, lambda r: r["stratum"],
                                       lambda r: [r["metrics"].get(name) for name, _ in objectives],
                                       [direction for _, direction in objectives])
    else:
        ordered = rank_within_strata(rows, lambda r: r["stratum"], lambda r: r["metrics"].get(metric), mode)
    for row, _, rank in ordered:
        if top and (rank is None or rank > top):
            continue
        ranked.append({**row, "rank": rank})
    return ranked


def winners(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rank-1 trial of every stratum."""
    return [row for row in rows if row["rank"] == 1]


# ------------------------------------------------------------------------------------- export
def per_image_table(client, run_id: str, step: Optional[int] = None) -> Optional[M.PerImage]:
    """A trial run's per-image results of its evaluation at ``step`` (default: its last evaluation, the one its
    final metrics come from); None for runs recorded before lic-search kept them."""
    import tempfile

    try:
        files = sorted(a.path for a in client.list_artifacts(run_id, M.PER_IMAGE_FOLDER)
                       if a.path.rsplit("/", 1)[-1].startswith("step_"))
    except Exception:  # noqa: BLE001 - an artifact store that cannot list: no table, the intervals say so
        return None
    if step is not None:
        files = [f for f in files if f == M.per_image_artifact(step)]
    if not files:
        return None
    with tempfile.TemporaryDirectory() as folder, _no_download_bars():
        return M.PerImage.from_json(Path(client.download_artifacts(run_id, files[-1], folder)).read_text())


@contextlib.contextmanager
def _no_download_bars() -> Iterator[None]:
    """MLflow draws a progress bar per downloaded artifact: one per trial would bury the command's output."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def trial_config(run_id: str, tracking_uri: str) -> dict:
    """The exact (typed) config a trial trained with, from its ``trial_config.yaml`` artifact."""
    import tempfile

    import yaml

    client = tracking.client_for(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run_id, T.ARTIFACT_TRIAL_CONFIG, folder)
        return yaml.safe_load(Path(local).read_text())


def _grid_template(configs: Sequence[dict]) -> Optional[dict]:
    """One trial template that runs exactly ``configs``: the configs' one differing section as a grid.

    None when they differ in more than one top-level section (a grid per section would run the
    cross product, configs no search chose)."""
    differing = sorted({section for config in configs for section in set(config) | set(configs[0])
                        if config.get(section) != configs[0].get(section)})
    if len(differing) > 1:
        return None
    template = dict(configs[0])
    if differing:
        (section,) = differing
        template[section] = {"grid": [config.get(section) for config in configs]}
    return template


def ladder_template(configs: Sequence[dict], roles: Sequence[Optional[str]],
                    stratify_by: Sequence[str] = DEFAULT_STRATIFY_BY) -> Optional[tuple[dict, dict]]:
    """(trial template, ladder section) that re-runs a ladder search's winners as a ladder, or None.

    The recipe is the start-point winner's (one start point among ``configs``); the rate points are the
    winners' values at the stratify keys that differ; ``fine_tune`` is what the fine-tuned winners
    set differently from the start point (their budget and learning rate), ``init_from`` aside."""
    from trainables.config import flatten

    starts = [c for c, role in zip(configs, roles) if role in T.LADDER_STARTS]
    tuned = [flatten(c) for c, role in zip(configs, roles) if role == T.LADDER_FINE_TUNE]
    if len(starts) != 1 or not tuned:
        return None
    start = flatten(starts[0])
    flats = [flatten(c) for c in configs]
    rates = [k for k in stratify_by if len({json.dumps(f.get(k)) for f in flats}) > 1]
    fine_tune = {k: v for k, v in tuned[0].items()
                 if k not in rates and not k.startswith("model.init_from") and start.get(k) != v}
    template = json.loads(json.dumps(starts[0]))
    template.get("model", {}).pop("init_from", None)
    template.get("model", {}).pop("init_from_partial", None)
    for key in rates:
        values = sorted({f.get(key) for f in flats}, key=lambda v: (str(type(v)), v))
        node = template
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {"grid": values}
    return template, {"start": {k: start.get(k) for k in rates}, "fine_tune": fine_tune}


def export_space(experiment: str, run_ids: Sequence[str], target: Path, tracking_uri: Optional[str] = None,
                 iterations: Optional[int] = None, why: str = "",
                 stratify_by: Sequence[str] = DEFAULT_STRATIFY_BY) -> list[Path]:
    """Write space file(s) that train exactly the given trials' configs again, at full (or given) budget.

    One file with a grid over the configs when they differ in one section (e.g. only ``loss``:
    the λ of each rate point); otherwise one file per config (``BEST-1.yaml``, ...), because a grid
    per section would also run combinations nobody chose. Returns the files written.
    """
    import yaml

    uri = tracking_uri or tracking.default_tracking_uri()
    configs, roles = [], []
    client = tracking.client_for(uri)
    for run_id in run_ids:
        config = trial_config(run_id, uri)
        role = client.get_run(run_id).data.tags.get(T.TAG_LADDER)
        if iterations and role != T.LADDER_FINE_TUNE:
            config["schedule"]["iterations"] = iterations
        if config not in configs:
            configs.append(config)
            roles.append(role)
    if not configs:
        raise LicSearchError(f"--export: no trial of {experiment!r} to export")
    target = Path(target)
    ladder = ladder_template(configs, roles, stratify_by)
    template = _grid_template(configs) if ladder is None else ladder[0]
    if template is not None:
        plan = [(target, template, run_ids)]
    else:
        plan = [(target.with_name(f"{target.stem}-{i}{target.suffix}"), config, [run_id])
                for i, (config, run_id) in enumerate(zip(configs, run_ids), 1)]
    written = []
    for path, trial, sources in plan:
        space = {
            "name": f"{experiment}-best",
            "description": f"re-run of {why or 'the best trials'} of search {experiment!r} "
                           f"(MLflow runs {', '.join(sources)})",
            "trial": trial,
            "search": {"algorithm": "random", "num_samples": 1},
            "scheduler": {"type": "fifo"},
        }
        if ladder is not None:  # a ladder search is re-run as a ladder: its start point first, the rest fine-tuned
            space["ladder"] = ladder[1]
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        written.append(path)
    return written


__all__ = ["SearchSelection", "select_search", "trial_runs", "best_trials", "winners", "trial_config",
           "export_space", "ladder_template"]
