"""Options and printing shared by the commands that run searches."""

from __future__ import annotations

import sys
from pathlib import Path

from search.monitor import summary


def add_cluster_options(parser) -> None:
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster (e.g. auto or 10.0.0.1:6379); default: a local cluster")


def add_verbose_option(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's own output (a box per trial start and result, a line per checkpoint) "
                             "instead of the compact live view")


def print_summary(results, folder: Path) -> None:
    """The end of a search: counts, best trial per rate point, where results are, how to resume and browse.

    The best-per-rate-point table also goes to the search's MLflow parent run (artifact, tags, metrics),
    through the tracking journal: a server that is down gets it from ``lic-search sync`` or resume."""
    errors = sum(1 for r in results if r.error)
    print(f"\n{len(results)} trials ({errors} errored). Experiment folder: {folder}")
    from search.space.training_data import skipped_images  # (imports torch: only once a search ran)
    print(skipped_images(results).describe())
    store, state, ranking = _search_state(folder)
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
    import yaml

    from search.experiment.state import SPACE_COPY, SearchState
    from search.experiment.store import ExperimentStore

    try:
        store = ExperimentStore(folder)
        state = SearchState.load(store)
        search = (yaml.safe_load(store.read_text(SPACE_COPY)) or {}).get("search")
        return store, state, summary.Ranking.of(search)
    except Exception:  # the summary must never hide the search's outcome
        return None, None, summary.Ranking()


def _record(store, state, best, ranking) -> None:
    from search.tracking import journal as J
    from search.tracking import session as tracking_session

    try:
        pending = tracking_session.record_summary(store, state,
                                                  summary.parent_summary(best, ranking, J.PARENT_RUN_PLACEHOLDER))
    except Exception as error:  # noqa: BLE001 - the search is done; say so and go on
        print(f"note: could not journal the summary for MLflow parent run {state.parent_run_id}: {error}",
              file=sys.stderr)
        return
    if pending:
        print(f"note: the summary is in the tracking journal with {pending} records not in MLflow "
              f"({state.tracking_uri}) yet; ship them with: lic-search sync {store}", file=sys.stderr)
