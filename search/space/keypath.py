"""Key paths into nested trial configs and the sampling primitives a space template holds.

One place for what the space loader, the algorithm checks, the searchers and the
schedulers all need: reading and writing a value at ``("loss", "lmbda")`` (or the dotted
``"loss.lmbda"``), and finding the one-key ``{grid: [...]}``-style primitives in a template.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Optional, Union

from search.space.primitives import KINDS

#: The sampling primitives of a space file's ``trial`` section (a mapping with one of these as its only key).
PRIMITIVES: tuple[str, ...] = tuple(KINDS)  # what each one means: search.space.primitives

Keys = tuple  # a key path inside a nested config, e.g. ("model", "auxt", "lambda_orth")
KeyPath = Union[Keys, str]  # a tuple of keys, or the same keys joined by dots ("loss.lmbda")


def as_keys(path: KeyPath) -> Keys:
    """``"loss.lmbda"`` -> ``("loss", "lmbda")``; tuples pass through."""
    return tuple(path.split(".")) if isinstance(path, str) else tuple(path)


def dotted(keys: Keys, prefix: str = "trial") -> str:
    """``("loss", "lmbda")`` -> ``"trial.loss.lmbda"`` (the spelling of error messages)."""
    return ".".join([prefix, *map(str, keys)]) if prefix else ".".join(map(str, keys))


def get_path(config: Any, path: KeyPath, default: Any = None) -> Any:
    """The value at ``path``, or ``default`` where a key is missing or a node is not a mapping."""
    node = config
    for key in as_keys(path):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def set_path(config: dict, path: KeyPath, value: Any) -> None:
    """Set the value at ``path``, creating missing intermediate mappings."""
    keys = as_keys(path)
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def substitute(template: Any, values: "Iterable[tuple[Keys, Any]]") -> Any:
    """A deep copy of ``template`` with each (key path, value) put in place; the empty path
    replaces the whole template (a primitive standing for the whole mapping)."""
    config = copy.deepcopy(template)
    for keys, value in values:
        if keys:
            set_path(config, keys, copy.deepcopy(value))
        else:
            config = copy.deepcopy(value)
    return config


def primitive(node: Any) -> Optional[tuple[str, Any]]:
    """``(kind, args)`` when ``node`` is a sampling primitive (``{grid: [...]}``), else None."""
    if isinstance(node, dict) and len(node) == 1:
        (key, value), = node.items()
        if key in PRIMITIVES:
            return key, value
    return None


def primitive_sites(node: Any, keys: Keys = ()) -> list[tuple[Keys, str, Any]]:
    """Every primitive in a template: (key path, kind, args), in file order; not inside primitives."""
    found = primitive(node)
    if found is not None:
        return [(keys, *found)]
    if isinstance(node, dict):
        return [site for key, value in node.items() for site in primitive_sites(value, keys + (key,))]
    return []


def first_difference(stored: Any, current: Any, keys: Keys = ()) -> Optional[str]:
    """The dotted key path of the first place two nested configs differ (mapping keys in ``current``'s order,
    then keys only ``stored`` has), or None when they are equal. The root differs as ``<root>``."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in stored if k not in current)]:
            if key not in stored or key not in current:
                return dotted((*keys, key), prefix="")
            found = first_difference(stored[key], current[key], (*keys, key))
            if found is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for index, (old, new) in enumerate(zip(stored, current)):
            found = first_difference(old, new, (*keys, index))
            if found is not None:
                return found
        return None
    return None if stored == current else (dotted(keys, prefix="") or "<root>")
