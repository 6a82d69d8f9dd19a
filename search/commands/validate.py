"""`lic-search validate SPACE.yaml`: check a space file without starting Ray, and show what it runs."""

from __future__ import annotations

from pathlib import Path

from search.errors import LicSearchError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="check a space file and print the resolved space, trial count and budget",
        description="Validate a search-space file (every error names the file, the key path and the allowed "
                    "values) and print the resolved trial template, the number of trials, the iteration budget "
                    "and the search/scheduler settings. Nothing is trained; Ray is not started.",
    )
    parser.add_argument("space", type=Path, nargs="?", help="search-space YAML file (see spaces/)")
    parser.add_argument("--no-data-check", action="store_true",
                        help="do not require the data folders to exist (e.g. on a machine without the data)")
    parser.add_argument("--keys", action="store_true",
                        help="print every key a space file may set, with its type, default and meaning")
    parser.set_defaults(func=_validate)


def gpu_warnings(resources) -> list[str]:
    """GPUs a trial asks for that this machine lacks: `run` here would refuse (a cluster is checked by `run
    --address` when it starts, since validate starts no Ray)."""
    import math

    import torch

    wanted = resources.gpus_per_trial
    local = torch.cuda.device_count()
    if wanted <= 0 or local >= math.ceil(wanted):
        return []
    return [f"warning: resources.gpus_per_trial is {wanted:g} but this machine has {local or 'no'} GPU"
            f"{'' if local == 1 else 's'}: `lic-search run` here would refuse the space; on a cluster, "
            "`lic-search run --address HOST:PORT` checks its nodes before any trial starts"]


def _validate(args) -> int:
    from search.space import describe_schema, load_space
    from search.space.describe import budget_notes

    if args.keys:
        print(describe_schema())
        if args.space is None:
            return 0
    if args.space is None:
        raise LicSearchError("validate needs a SPACE.yaml file (or --keys)")
    from search.space.training_data import check_training_data
    from trainables.config import TrialConfig
    from trainables.data.file_index import remembered_walks

    with remembered_walks():  # the data check's walk of the training folders serves the summary too
        spec = load_space(args.space, check_data=not args.no_data_check)
        summaries = [] if args.no_data_check else check_training_data(
            str(args.space), [TrialConfig.model_validate(config).data for config in spec.configs()])
    print(spec.describe())
    for summary in summaries:
        print(summary.describe())
    for line in budget_notes(spec.configs()) + gpu_warnings(spec.file.resources):
        print(line)
    print(f"\nOK: {args.space} is valid ({spec.trial_count()} trials"
          f"{'' if not args.no_data_check else '; data folders not checked'})")
    return 0
