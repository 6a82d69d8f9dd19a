"""`lic-search status NAME|PATH`: how far a search is, what it spent, what wins, and how to resume it."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="progress of a search (running, finished or interrupted) from any terminal",
        description="Reads the experiment folder: whether the driver is alive, trials by state, each trial's "
                    "progress and latest eval scores, the best trial per rate point, device-hours spent and, when "
                    "the driver is gone, the exact resume command.")
    parser.add_argument("search", metavar="NAME|PATH",
                        help="the experiment folder `lic-search run` printed, or the search's name")
    parser.add_argument("--storage-path", default="lic_search_results",
                        help="where to look for NAME's folder first (default: ./%(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store to find NAME's folder in otherwise (default: ./mlflow.db)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.set_defaults(func=_status)


def _status(args) -> int:
    from search.monitor.status import report, resolve

    lines, data = report(resolve(args.search, args.tracking_uri, args.storage_path))
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(lines))
    return 0
