"""The end of a ``run``/``resume``: counts, skipped files, the best trial per rate point, where the results are,
how to resume and browse; the best-per-rate-point table goes to the parent run through the tracking journal."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from search.errors import LicSearchError
from search.experiment import skipped
from search.experiment.state import SPACE_COPY, SearchState
from search.experiment.store import ExperimentStore
from search.monitor import summary
from search.tracking import journal as J
from search.tracking import session as tracking_session


def print_ending(results, folder: str | Path) -> None:
    """The end of a search: counts, best trial per rate point, where results are, how to resume and browse.

    The best-per-rate-point table also goes to the search's MLflow parent run (artifact, tags, metrics),
    through the tracking journal: a server that is down gets it from ``lic-search sync`` or resume."""
    errors = sum(1 for r in results if r.error)
    print(f"\n{len(results)} trials ({errors} errored). Experiment folder: {folder}")
    from search.space.training_data import (
        skipped_images,  # (imports torch: only once a search ran)
    )
    print(skipped_images(results).describe())
    store, state, ranking = _search_state(folder)
    named = skipped.describe(store) if store is not None else None
    if named:
        print(named)
    entries = [summary.Entry(str(r.metrics.get("trial_id", "?")), r.config, r.metrics)
               for r in results if not r.error and r.metrics and r.config]
    best = summary.best_per_rate_point(entries, ranking)
    print(f"Best per rate point (by {ranking.metric}, {ranking.mode}):" if best else "No trial reported a score.")
    for line in summary.lines(best, ranking):
        print(line)
    if state is not None and best:
        _record(store, state, best, ranking)
    name = state.name if state else "<name>"
    uri = state.tracking_uri if state else "sqlite:///mlflow.db"
    print(f"Resume with: lic-search resume {folder}\n"
          f"Progress:    lic-search status {folder}\n"
          f"Browse with: lic-search best {name}   or   mlflow ui --backend-store-uri {uri}")


def _search_state(folder):
    """The search's recorded state and ranking (None and the defaults when the folder cannot say)."""
    try:
        store = ExperimentStore(folder)
        state = SearchState.load(store)
        search = (yaml.safe_load(store.read_text(SPACE_COPY)) or {}).get("search")
        return store, state, summary.Ranking.of(search)
    except (LicSearchError, OSError, ValueError, yaml.YAMLError) as error:  # the summary never hides the outcome
        print(f"note: {folder}: cannot read the search's state ({error}); ranking by eval/rd_loss (min)",
              file=sys.stderr)
        return None, None, summary.Ranking()


def _record(store, state, best, ranking) -> None:
    try:
        pending = tracking_session.record_summary(store, state,
                                                  summary.parent_summary(best, ranking, J.PARENT_RUN_PLACEHOLDER))
    except OSError as error:  # the journal cannot be written (disk full, folder gone): the search is done, say so
        print(f"note: could not journal the summary for MLflow parent run {state.parent_run_id}: {error}",
              file=sys.stderr)
        return
    if pending:
        print(f"note: the summary is in the tracking journal with {pending} records not in MLflow "
              f"({state.tracking_uri}) yet; ship them with: lic-search sync {store}", file=sys.stderr)
