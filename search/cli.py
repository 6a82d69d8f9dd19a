"""`lic-search` entry point: discovers the subcommands in :mod:`search.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from typing import Optional, Sequence

from search import commands
from search.commands._shared import EXIT_CTRL_C, EXIT_REFUSED, EXIT_REQUEUE
from search.tuning.interrupt import JobEnded
from search.errors import LicSearchError


#: Third-party notices a user can do nothing about, matched exactly (category, start of the message):
#: new warnings still show, and ``--verbose`` (any command) shows these too.
KNOWN_WARNINGS = (
    # CompressAI scripts its entropy models with torch.jit at import; torch >= 2.10 deprecates it.
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
)


def quiet_known_warnings(argv: Sequence[str]) -> None:
    """Ignore :data:`KNOWN_WARNINGS` unless ``--verbose`` is given (before any command imports torch)."""
    if "--verbose" in argv:
        return
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lic-search",
        description="Hyperparameter and schedule search for learned image compression on Ray Tune + MLflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    for command in {id(p): p for p in subparsers.choices.values()}.values():
        try:
            command.add_argument("--verbose", action="store_true", dest="show_warnings",
                                 help="also show third-party deprecation notices")
        except argparse.ArgumentError:
            pass  # run/resume: their own --verbose, which shows them too
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    quiet_known_warnings(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LicSearchError as error:
        print(f"lic-search: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except JobEnded as ended:  # a job's end while no trial was training: nothing lost, run the command again
        print(f"lic-search: got {ended}: stopped (nothing was training); the same command continues",
              file=sys.stderr)
        return EXIT_REQUEUE
    except KeyboardInterrupt:  # Ctrl-C: one line saying how far the command got and what it wrote
        from search.monitor.meter import interrupted

        print(interrupted(), file=sys.stderr)
        return EXIT_CTRL_C


if __name__ == "__main__":
    sys.exit(main())
