"""The end of a ``run``/``resume``: counts, skipped files, the best trial per rate point, where the results are,
how to resume and browse; the best-per-rate-point table goes to the parent run through the tracking journal."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from search.errors import LicSearchError
from search.experiment import skipped
from search.experiment.state import SPACE_COPY, SearchState
from search.experiment.store import ExperimentStore
from search.bootstrap import table_of
from search.monitor import summary
from search.space.variants import Variants, split_labels
from search.tracking import client as tracking_client
from search.tracking import journal as J
from search.tracking import run_names, view
from search.tracking import session as tracking_session
from search.tracking.queries import ensure_view, select_search
from trainables import metrics as M
from trainables.config import flatten


def print_ending(results, folder: str | Path, stopped: bool = False) -> None:
    """The end of a search: counts, best trial per rate point, where results are, how to resume and browse.

    The resume line appears only where resuming can help: a ``stopped`` search, or errored trials that
    resume retries (not those with no loadable checkpoint: :func:`retriable_errors`).

    The best-per-rate-point table also goes to the search's MLflow parent run (artifact, tags, metrics),
    through the tracking journal: a server that is down gets it from ``lic-search sync`` or resume."""
    diverged = [r for r in results if _diverged(r)]
    errors = errored(results)
    why = f", {len(diverged)} of them diverged" if diverged else ""
    print(f"\n{len(results)} trials ({errors} errored{why}). Experiment folder: {folder}")
    from search.space.training_data import (
        skipped_images,  # (imports torch: only once a search ran)
    )
    print(skipped_images(results).describe())
    store, state, ranking, variants = _search_state(folder)
    named = skipped.describe(store) if store is not None else None
    if named:
        print(named)
    entries = [summary.Entry(str(r.metrics.get("trial_id", "?")), r.config, r.metrics, table_of(r.metrics))
               for r in results if not r.error and not _diverged(r) and r.metrics and r.config]
    best = summary.best_per_rate_point(entries, ranking, variants=variants)
    fronts = summary.pareto_fronts(entries, ranking, variants=variants) if ranking.objectives else []
    if fronts:  # a multi-objective search's answer is a front per rate point, not one winner
        print(f"Pareto front per rate point ({ranking.describe_objectives()}):")
        for line in summary.front_lines(fronts, ranking):
            print(line)
    else:
        print(f"Best per rate point (by {ranking.metric}, {ranking.mode}):" if best else "No trial reported a score.")
        for line in summary.lines(best, ranking):
            print(line)
    if state is not None and best:
        keys = run_names.column_keys((e.config for e in entries), variants)
        _record(store, state, best, ranking, fronts, view.view_tag(state.name, J.PARENT_RUN_PLACEHOLDER,
                                                           int(time.time() * 1000), ranking.metric, ranking.mode,
                                                           [flat for k in keys for flat in _param_keys(entries, k)]))
    name = state.name if state else "<name>"
    uri = state.tracking_uri if state else tracking_client.default_tracking_uri()
    where = "" if uri == tracking_client.default_tracking_uri() else f" --tracking-uri {uri}"
    retriable = retriable_errors(results)
    if stopped:
        print(f"Resume with: lic-search resume {folder}   (or the same `lic-search run ... --resume-if-exists`)")
    elif retriable:
        print(f"Resume with: lic-search resume {folder}   (retries {retriable} errored trial"
              f"{'' if retriable == 1 else 's'} from {'its' if retriable == 1 else 'their'} last checkpoint)")
    print(f"Progress:    lic-search status {folder}\n"
          f"Browse with: lic-search best {name}{where}   or   lic-search ui {name}{where} --open")
    url = _runs_url(state) if state is not None else None
    if url:
        print(f"MLflow UI:   {url}" + ("" if uri.startswith(("http://", "https://")) else
                                        "   (served by lic-search ui)"))


#: The error of a trial none of whose checkpoints loads (trainables/training/trainable.py): resuming retries the
#: same checkpoints and fails the same way.
NO_CHECKPOINT_LOADS = "no checkpoint of this trial loads"


def errored(results) -> int:
    """Trials that errored or diverged."""
    return sum(1 for r in results if r.error or _diverged(r))


def retriable_errors(results) -> int:
    """Errored trials ``resume`` can retry: with a checkpoint to start from, and not every checkpoint damaged."""
    return sum(1 for r in results if r.error and r.checkpoint is not None and NO_CHECKPOINT_LOADS not in str(r.error))


def _diverged(result) -> bool:
    """A trial whose loss went non-finite: a terminal result (no Ray error), errored in our words."""
    return not result.error and bool((result.metrics or {}).get(M.DIVERGED))


def _param_keys(entries, key: str) -> list[str]:
    """The MLflow param names (flattened config keys) under a distinguishing key: itself, or a mapping's leaves."""
    flat = [k for e in entries for k in flatten(e.config) if k == key or k.startswith(key + ".")]
    return list(dict.fromkeys(flat))


def _runs_url(state) -> str | None:
    """The search's runs in the MLflow UI (None when MLflow cannot say where: a server down, nothing shipped)."""
    from mlflow.exceptions import MlflowException

    try:
        if not tracking_session.reachable(state.tracking_uri, offline=True, notify=lambda message: None):
            return None
        selection = select_search(state.name, state.tracking_uri, state.parent_run_id or None)
        if selection.parent_run_id is None:
            return None
        ensure_view(selection)  # a search without a summary (no trial scored) still gets its view
    except (LicSearchError, OSError, MlflowException):  # the link is a convenience: never hide the outcome
        return None
    return view.runs_url(view.ui_base(state.tracking_uri), selection.experiment_id, selection.parent_run_id)


def _search_state(folder):
    """The search's recorded state, ranking and labelled variants (None and the defaults when the folder
    cannot say)."""
    try:
        store = ExperimentStore(folder)
        state = SearchState.load(store)
        space = yaml.safe_load(store.read_text(SPACE_COPY)) or {}
        _, variants = split_labels(SPACE_COPY, space.get("trial") or {})
        return store, state, summary.Ranking.of(space.get("search")), variants
    except (LicSearchError, OSError, ValueError, yaml.YAMLError) as error:  # the summary never hides the outcome
        print(f"note: {folder}: cannot read the search's state ({error}); ranking by eval/rd_loss (min)",
              file=sys.stderr)
        return None, None, summary.Ranking(), Variants()


def _record(store, state, best, ranking, fronts, view_tag: tuple[str, str]) -> None:
    fields = summary.parent_summary(best, ranking, J.PARENT_RUN_PLACEHOLDER, fronts)
    fields["experiment_tags"] = dict([view_tag])
    try:
        pending = tracking_session.record_summary(store, state, fields)
    except OSError as error:  # the journal cannot be written (disk full, folder gone): the search is done, say so
        print(f"note: could not journal the summary for MLflow parent run {state.parent_run_id}: {error}",
              file=sys.stderr)
        return
    if pending:
        print(f"note: the summary is in the tracking journal with {pending} records not in MLflow "
              f"({state.tracking_uri}) yet; ship them with: lic-search sync {store}", file=sys.stderr)
