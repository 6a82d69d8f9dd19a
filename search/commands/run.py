"""`lic-search run SPACE.yaml`: validate a space and run its search on Ray Tune."""

from __future__ import annotations

from pathlib import Path

from search.commands._shared import add_search_options, catch_job_end, finish

DEFAULT_STORAGE = "lic_search_results"


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run a search from a YAML space file")
    parser.add_argument("space", type=Path, help="search-space YAML file (see spaces/)")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help="where Ray Tune keeps trial checkpoints and state (default: ./%(default)s); "
                             "a shared or cloud path for multi-node clusters")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite store ./mlflow.db, what `mlflow ui` opens)")
    parser.add_argument("--name", default=None, help="override the search name from the space file")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="if the storage path already holds this search, continue it (or exit 0 when it has "
                             "finished) instead of refusing; its stored space must equal SPACE. The one command a "
                             "requeued batch job runs (exit codes: docs/resume.md)")
    add_search_options(parser)
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from search.monitor import console
    from search.tuning import tuner

    console.configure(verbose=args.verbose)
    catch_job_end()

    outcome = tuner.run_search(args.space, args.storage_path, tracking_uri=args.tracking_uri,
                               address=args.address, name=args.name, tracking_offline=args.tracking_offline,
                               flush_seconds=args.tracking_flush_seconds, resume_if_exists=args.resume_if_exists)
    return finish(outcome)
