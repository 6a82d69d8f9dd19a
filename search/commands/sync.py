"""`lic-search sync NAME|PATH`: ship tracking records a search left in its journal to MLflow.

A search whose tracking server was down when it ended keeps the records MLflow has not got in
``tracking_journal.jsonl`` (experiment folder); this ships them, in order and without
duplicates. ``resume`` does the same before it starts.
"""

from __future__ import annotations

import socket
import time

from search.commands._shared import add_quiet_option

DEFAULT_STORAGE = "lic_search_results"


def register(subparsers) -> None:
    parser = subparsers.add_parser("sync", help="ship tracking records a search left in its journal to MLflow")
    parser.add_argument("experiment", help="the experiment folder, or a search name under --storage-path")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help="where to look for a search given by name (default: ./%(default)s)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="stop after S seconds; what is left stays in the journal (default: ship everything)")
    add_quiet_option(parser)
    parser.set_defaults(func=_sync)


def resolve(experiment: str, storage_path: str):
    """The experiment folder of a path or of a search name under ``storage_path``."""
    from search.experiment.store import ExperimentStore
    from search.monitor.status import experiment_folder

    return experiment_folder(experiment, storage_path) or ExperimentStore.under(storage_path, experiment)


def _say(meter, message: str) -> None:
    with meter.paused():
        print(message)


def _sync(args) -> int:
    from search.errors import TrackingError
    from search.experiment import ray_session
    from search.experiment.state import SearchState
    from search.tracking import journal as J
    from search.monitor import meter as meters
    from search.monitor.meter import Meter
    from search.tracking import session as tracking_session

    meters.configure(args.quiet)
    store = resolve(args.experiment, args.storage_path)
    state = SearchState.load(store)
    running = ray_session.load(store)
    if running is not None and running.host == socket.gethostname() and running.driver_alive():
        raise TrackingError(f"{store}: a search driver (pid {running.driver_pid}) is running this search and ships "
                            "its own tracking journal; sync after it ends")
    pending = J.Journal(store).pending
    if pending == 0:
        print(f"{store}: tracking is up to date in {state.tracking_uri} (nothing pending in the journal)")
        return 0
    tracking_session.reachable(state.tracking_uri, offline=False)
    deadline = time.time() + args.timeout if args.timeout else None
    try:
        with Meter("sync: shipping journal records", "record") as meter:
            meter.written = "{n} record(s) shipped to MLflow; the rest stays in the journal: run lic-search sync again"
            tracking_session.sync(store, state, deadline, notify=lambda message: _say(meter, message),
                                  progress=meter)
    except Exception as error:  # noqa: BLE001 - MLflow's and the network's errors: the journal keeps them
        journal = J.Journal(store)
        raise TrackingError(f"{journal.location}: shipping to {state.tracking_uri} stopped at record "
                            f"{journal.shipped} of {len(journal.records())}: {error.__class__.__name__}: {error}; "
                            f"run `lic-search sync {store}` again") from None
    left = J.Journal(store).pending
    return 0 if left == 0 else 1
