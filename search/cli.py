"""`lic-search` entry point: discovers the subcommands in :mod:`search.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Optional, Sequence

from search import commands
from search.errors import LicSearchError


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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LicSearchError as error:
        print(f"lic-search: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line saying how far the command got and what it wrote
        from search.monitor.meter import interrupted

        print(interrupted(), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
