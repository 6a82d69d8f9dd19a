"""Options, printing and exit codes shared by the commands that run searches."""

from __future__ import annotations

#: Exit codes of ``run`` and ``resume`` (docs/resume.md, "exit codes"), for scripts and batch jobs to act on.
EXIT_FINISHED = 0  # every trial ended (or the search had already finished): nothing left to train
EXIT_REFUSED = 2  # refused before starting (bad space, different stored space, unreachable server...)
EXIT_ERRORED_TRIALS = 3  # finished, but some trials errored or diverged: requeueing would not help
EXIT_REQUEUE = 75  # stopped by SIGTERM/SIGUSR1/SIGUSR2 after checkpointing: unfinished, run it again (EX_TEMPFAIL)
EXIT_CTRL_C = 130  # stopped by Ctrl-C: unfinished, resumable


def catch_job_end() -> None:
    """Job-end signals end ``run``/``resume`` with :data:`EXIT_REQUEUE` (search.tuning.interrupt)."""
    from search.tuning.interrupt import catch_job_end as catch

    catch()


def exit_code(outcome) -> int:
    """The exit code of a search's outcome (``search.tuning.tuner.SearchOutcome``)."""
    from search.monitor.ending import errored

    if outcome.stopped_by is not None:
        return EXIT_CTRL_C if outcome.stopped_by == "Ctrl-C" else EXIT_REQUEUE
    if outcome.results is not None and errored(outcome.results):
        return EXIT_ERRORED_TRIALS
    return EXIT_FINISHED


def finish(outcome) -> int:
    """The end of ``run``/``resume``: the summary (unless the search had already finished) and the exit code."""
    from search.monitor import ending

    if outcome.results is not None:  # None: a finished search, nothing trained (resume_search said so)
        ending.print_ending(outcome.results, outcome.folder, stopped=outcome.stopped_by is not None)
    return exit_code(outcome)


def add_cluster_options(parser) -> None:
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster (e.g. auto or 10.0.0.1:6379); default: a local cluster")


def add_verbose_option(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's own output (a box per trial start and result, a line per checkpoint) "
                             "instead of the compact live view")


def add_search_options(parser) -> None:
    """The options of the commands that run a search (run, resume): cluster, console and tracking."""
    add_cluster_options(parser)
    add_verbose_option(parser)
    add_tracking_options(parser)


def add_quiet_option(parser) -> None:
    """``--quiet`` for the commands with a progress meter (search/monitor/meter.py)."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress on stderr (by default: a bar in a terminal, else a line every 30 s)")


def add_tracking_options(parser) -> None:
    """The tracking options of the commands that run searches (run, resume)."""
    from search.tracking.session import DEFAULT_FLUSH_SECONDS

    parser.add_argument("--tracking-offline", action="store_true",
                        help="start even when the MLflow tracking server is unreachable: record to the experiment's "
                             "tracking journal and ship when it answers (or later with `lic-search sync`)")
    parser.add_argument("--tracking-flush-seconds", type=float, default=DEFAULT_FLUSH_SECONDS, metavar="S",
                        help="at the end of the search, wait at most S seconds for pending tracking records to reach "
                             "MLflow; the rest stays in the journal for `lic-search sync` (default: %(default)s)")
