"""`lic-search resume EXPERIMENT_DIR`: continue an interrupted search."""

from __future__ import annotations

from pathlib import Path

from search.commands._shared import add_cluster_options, print_summary


def register(subparsers) -> None:
    parser = subparsers.add_parser("resume", help="continue an interrupted search from its experiment folder")
    parser.add_argument("experiment_dir", help="the folder `run` printed, e.g. lic_search_results/quickstart")
    add_cluster_options(parser)
    parser.set_defaults(func=_resume)


def _resume(args) -> int:
    from search.tuner import resume_search

    results, folder = resume_search(args.experiment_dir, address=args.address)
    print_summary(results, folder)
    return 0
