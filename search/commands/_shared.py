"""Options and printing shared by the commands that run searches."""

from __future__ import annotations


def add_cluster_options(parser) -> None:
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster (e.g. auto or 10.0.0.1:6379); default: a local cluster")


def add_verbose_option(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="Ray Tune's own output (a box per trial start and result, a line per checkpoint) "
                             "instead of the compact live view")
