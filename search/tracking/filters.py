"""MLflow search filters built from values, quoted in one place.

MLflow's filter grammar has no escape character: a value is written in single quotes, or in double quotes
when it holds a single quote (a storage path like ``/data/o'brien/results``). A value holding both kinds
is matched with ``LIKE`` (each quote a one-character wildcard) and the runs found are checked for the exact
value here, so a lookup never matches the wrong search and never fails on the user's path.
"""

from __future__ import annotations

from typing import Iterable, Mapping


def quoted(value: str) -> str:
    """``value`` as an MLflow filter string literal (raises for a value holding both quote kinds)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote kinds: match it with tags_filter")


def _clause(key: str, value: str) -> str:
    try:
        return f"tags.`{key}` = {quoted(value)}"
    except ValueError:
        pattern = str(value).replace("'", "_").replace('"', "_")
        return f"tags.`{key}` LIKE '{pattern}'"


def tags_filter(tags: Mapping[str, str]) -> str:
    """A filter string matching runs whose tags hold these values (possibly more: keep :func:`exact` after)."""
    return " and ".join(_clause(key, value) for key, value in tags.items())


def exact(runs: Iterable, tags: Mapping[str, str]) -> list:
    """The runs whose tags equal ``tags`` exactly (drops what a ``LIKE`` fallback let through)."""
    return [run for run in runs if all(run.data.tags.get(key) == str(value) for key, value in tags.items())]
