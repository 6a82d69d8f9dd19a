"""`lic-search resume EXPERIMENT_DIR`: continue an interrupted search."""

from __future__ import annotations

from search.commands._shared import add_search_options


def register(subparsers) -> None:
    parser = subparsers.add_parser("resume", help="continue an interrupted search from its experiment folder")
    parser.add_argument("experiment_dir", help="the folder `run` printed, e.g. lic_search_results/quickstart")
    add_search_options(parser)
    parser.set_defaults(func=_resume)


def _resume(args) -> int:
    from search.monitor import console, ending
    from search.tuning import tuner

    console.configure(verbose=args.verbose)

    outcome = tuner.resume_search(args.experiment_dir, address=args.address,
                                  tracking_offline=args.tracking_offline, flush_seconds=args.tracking_flush_seconds)
    if outcome.results is None:  # a finished search: nothing was trained (resume_search said so)
        return 0
    ending.print_ending(outcome.results, outcome.folder)
    return 130 if outcome.interrupted else 0
