"""`lic-search resume EXPERIMENT_DIR`: continue an interrupted search."""

from __future__ import annotations

from search.commands._shared import add_search_options, catch_job_end, finish


def register(subparsers) -> None:
    parser = subparsers.add_parser("resume", help="continue an interrupted search from its experiment folder")
    parser.add_argument("experiment_dir", help="the folder `run` printed, e.g. lic_search_results/quickstart")
    add_search_options(parser)
    parser.set_defaults(func=_resume)


def _resume(args) -> int:
    from search.monitor import console
    from search.tuning import tuner

    console.configure(verbose=args.verbose)
    catch_job_end()

    outcome = tuner.resume_search(args.experiment_dir, address=args.address,
                                  tracking_offline=args.tracking_offline, flush_seconds=args.tracking_flush_seconds)
    return finish(outcome)
