"""`lic-search ui`: the MLflow UI over the search results, bound to 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys

from search.tracking import client as tracking


def register(subparsers) -> None:
    parser = subparsers.add_parser("ui", help="start the MLflow UI (127.0.0.1 only) over the results")
    parser.add_argument("--tracking-uri", default=None, help="store to show (default: ./mlflow.db)")
    parser.add_argument("--port", type=int, default=5000)
    parser.set_defaults(func=_ui)


def mlflow_ui_command(tracking_uri: str, port: int) -> list[str]:
    """The command line: loopback only, so results are not exposed to the network by accident."""
    executable = shutil.which("mlflow") or sys.executable
    prefix = [executable] if executable.endswith("mlflow") else [executable, "-m", "mlflow"]
    return prefix + ["ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port)]


def _ui(args) -> int:
    command = mlflow_ui_command(args.tracking_uri or tracking.default_tracking_uri(), args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port}  ({' '.join(command)})", flush=True)
    os.execv(command[0], command)
    return 0  # not reached
