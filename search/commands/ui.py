"""`lic-search ui`: the MLflow UI over the search results, bound to 127.0.0.1, opened on a search's trials;
`lic-search ui --optuna EXPERIMENT`: optuna-dashboard on an Optuna search's studies (one per grid point)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from search.errors import LicSearchError

if TYPE_CHECKING:
    from search.tracking.queries import SearchSelection

STARTUP_SECONDS = 300.0  # mlflow ui takes seconds on an idle machine, minutes on a loaded one


def register(subparsers) -> None:
    parser = subparsers.add_parser("ui", help="start the MLflow UI (127.0.0.1 only) and print the URL of a search's "
                                              "trials, grouped by rate point")
    parser.add_argument("search", nargs="?", default=None,
                        help="search (experiment) name; default: the search started last in the store")
    parser.add_argument("--run-id", default=None, help="that search's parent run (default: its latest)")
    parser.add_argument("--tracking-uri", default=None, help="store to show (default: ./mlflow.db)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 5000; 8080 with --optuna)")
    parser.add_argument("--open", action="store_true", help="open the URL in a web browser once the UI answers")
    parser.add_argument("--optuna", metavar="EXPERIMENT", default=None,
                        help="instead of MLflow: optuna-dashboard on the Optuna studies of this search (its experiment "
                             "folder or name): history, parameter importances, Pareto fronts per grid point")
    parser.add_argument("--storage-path", default="lic_search_results",
                        help="with --optuna: where to look for a search given by name (default: %(default)s)")
    parser.set_defaults(func=_ui)


def mlflow_ui_command(tracking_uri: str, port: int) -> list[str]:
    """The command line: loopback only, so results are not exposed to the network by accident."""
    executable = shutil.which("mlflow") or sys.executable
    prefix = [executable] if executable.endswith("mlflow") else [executable, "-m", "mlflow"]
    return prefix + ["ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port)]


def search_url(selection: Optional["SearchSelection"], base: str) -> str:
    """The URL ``ui`` prints: the search's saved view (written if missing), else the UI's experiment list."""
    from search.tracking import view
    from search.tracking.queries import ensure_view

    if selection is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    ensure_view(selection)
    return view.runs_url(base, selection.experiment_id, selection.parent_run_id)


def _selection(args, uri: str) -> Optional["SearchSelection"]:
    from search.tracking.queries import latest_search, select_search

    if args.search is not None:
        return select_search(args.search, uri, args.run_id)
    if args.run_id is not None:
        raise LicSearchError("ui: --run-id needs the search's name (lic-search ui NAME --run-id PARENT)")
    return latest_search(uri)


def optuna_dashboard_command(storage: str, port: int) -> list[str]:
    """optuna-dashboard on an Optuna storage (journal file or database URL), loopback only."""
    executable = shutil.which("optuna-dashboard")
    if executable is None:
        raise LicSearchError("ui --optuna: optuna-dashboard is not installed (pip install optuna-dashboard; "
                             "lic-search's install brings it)")
    return [executable, storage, "--host", "127.0.0.1", "--port", str(port)]


def experiment_optuna_storage(target: str, storage_path: str) -> str:
    """The Optuna storage of the search ``target`` (experiment folder or name): ``search.optuna_storage`` of
    its space, else the journal file in its folder."""
    import yaml

    from search.experiment.state import SearchState
    from search.monitor.status import resolve
    from search.tuning.searchers import JOURNAL_FILE

    store = resolve(target, None, storage_path)
    space = yaml.safe_load(store.read_text(SearchState.load(store).space_file)) or {}
    search = space.get("search") or {}
    if search.get("algorithm") != "optuna":
        raise LicSearchError(f"ui --optuna: {store} is not an Optuna search (search.algorithm: "
                             f"{search.get('algorithm', 'random')}); its trials are in the MLflow UI (lic-search ui)")
    if search.get("optuna_storage"):
        return search["optuna_storage"]
    journal = Path(store.location) / JOURNAL_FILE
    if not journal.is_file():
        raise LicSearchError(f"ui --optuna: no Optuna journal {journal} (the search has not proposed a trial yet, "
                             "or it ran with an older lic-search that kept no journal)")
    return str(journal)


def _wait_until_up(process: subprocess.Popen, base: str, log: Path, probe: str = "/health",
                   what: str = "mlflow ui") -> None:
    import requests

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise LicSearchError(f"ui: {what} exited with status {process.returncode} (port "
                                 f"{base.rsplit(':', 1)[-1]} in use? pass --port); its last lines:\n{tail}")
        try:
            if requests.get(base + probe, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise LicSearchError(f"ui: {what} did not answer at {base} within {STARTUP_SECONDS:.0f} s")


def _ui(args) -> int:
    if args.optuna is not None:
        if args.search is not None or args.run_id is not None:
            raise LicSearchError("ui --optuna EXPERIMENT takes no search name or --run-id")
        storage = experiment_optuna_storage(args.optuna, args.storage_path)
        base = f"http://127.0.0.1:{args.port or 8080}"
        return _serve(optuna_dashboard_command(storage, args.port or 8080), base, f"{base}/dashboard",
                      "optuna-dashboard", "/api/studies", f"optuna-dashboard on {base} (Optuna storage: {storage}; {{log}}; "
                      "Ctrl-C stops it). The search's studies, one per grid point:", args.open)
    from search.tracking import client as tracking
    from search.tracking import view

    uri = args.tracking_uri or tracking.default_tracking_uri()
    remote = uri.startswith(("http://", "https://"))
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise LicSearchError(f"ui: no MLflow store at {uri[len('sqlite:///'):]}; run a search here first "
                             "or pass --tracking-uri")
    port = args.port or 5000
    base = view.ui_base(uri, None if remote else port)
    url = search_url(_selection(args, uri), base)
    if remote:  # the tracking server serves its own UI
        print(url, flush=True)
        if args.open:
            webbrowser.open(url)
        return 0
    return _serve(mlflow_ui_command(uri, port), base, url, "mlflow ui", "/health",
                  f"MLflow UI on {base} ({{log}}; Ctrl-C stops it). The search's trials by rate point:", args.open)


def _serve(command: list[str], base: str, url: str, what: str, probe: str, banner: str, open_url: bool) -> int:
    """Run a UI server until Ctrl-C or a signal: print its URL once it answers at ``base + probe``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stopped by a signal: stop the UI too
    log = Path(tempfile.mkdtemp(prefix="lic-search-ui-")) / f"{what.replace(' ', '-')}.log"  # not the console
    with open(log, "wb") as sink:
        # Its own process group: mlflow ui starts uvicorn workers and job consumers that outlive a plain
        # terminate of the mlflow process; stopping the group ends them all.
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(process, base, log, probe, what)
        print(f"{banner.replace('{log}', f'log: {log}')}\n{url}", flush=True)
        if open_url:
            webbrowser.open(url)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """End the mlflow ui process group this command started (the server, its workers and job consumers)."""
    for signal_number, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            return  # the whole group is gone
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)  # let the group's other members exit before probing it again
