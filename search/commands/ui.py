"""`lic-search ui`: the MLflow UI over the search results, bound to 127.0.0.1, opened on a search's trials."""

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
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--open", action="store_true", help="open the URL in a web browser once the UI answers")
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


def _wait_until_up(process: subprocess.Popen, base: str, log: Path) -> None:
    import requests

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise LicSearchError(f"ui: mlflow ui exited with status {process.returncode} (port "
                                 f"{base.rsplit(':', 1)[-1]} in use? pass --port); its last lines:\n{tail}")
        try:
            if requests.get(base + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise LicSearchError(f"ui: the MLflow UI did not answer at {base} within {STARTUP_SECONDS:.0f} s")


def _ui(args) -> int:
    from search.tracking import client as tracking
    from search.tracking import view

    uri = args.tracking_uri or tracking.default_tracking_uri()
    remote = uri.startswith(("http://", "https://"))
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise LicSearchError(f"ui: no MLflow store at {uri[len('sqlite:///'):]}; run a search here first "
                             "or pass --tracking-uri")
    base = view.ui_base(uri, None if remote else args.port)
    url = search_url(_selection(args, uri), base)
    if remote:  # the tracking server serves its own UI
        print(url, flush=True)
        if args.open:
            webbrowser.open(url)
        return 0
    command = mlflow_ui_command(uri, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stopped by a signal: stop the UI too
    log = Path(tempfile.mkdtemp(prefix="lic-search-ui-")) / "mlflow-ui.log"  # its request log: not the console
    with open(log, "wb") as sink:
        # Its own process group: mlflow ui starts uvicorn workers and job consumers that outlive a plain
        # terminate of the mlflow process; stopping the group ends them all.
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(process, base, log)
        print(f"MLflow UI on {base} (log: {log}; Ctrl-C stops it). The search's trials by rate point:\n{url}",
              flush=True)
        if args.open:
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
