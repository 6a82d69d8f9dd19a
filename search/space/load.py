"""Reading a space file: safe YAML with key paths, the top-level models, data paths; then validation.

:func:`load_space` is the one entry point: it parses, resolves relative data folders against
the file's folder and hands the spec to :mod:`search.space.validate`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from search.errors import SpaceError
from search.space import keypath as kp
from search.space.files import SpaceFile
from search.space.renamed import refuse_renamed, upgrade_renamed
from search.space.spec import SearchSpec
from search.space.variants import split_labels
from search.space.validate import check_spec, check_structure, pydantic_error


def load_yaml(file: str, text: str) -> Any:
    """``safe_load`` plus two checks with key paths: no duplicate keys, no non-standard tags."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as error:
            raise _yaml_error(file, error) from None
        if node is None:
            return None
        _check_nodes(file, node, ())
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as error:
            raise _yaml_error(file, error) from None
    finally:
        loader.dispose()


def _yaml_error(file: str, error: yaml.YAMLError) -> SpaceError:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error)
    return SpaceError(file, "", f"invalid YAML{where}: {problem}")


def _check_nodes(file: str, node: yaml.Node, keys: kp.Keys) -> None:
    line = f"line {node.start_mark.line + 1}"
    if node.tag not in yaml.SafeLoader.yaml_constructors:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SpaceError(file, ".".join(map(str, keys)), f"YAML tag {tag} ({line}) is not allowed: space files are "
                         "loaded safely, so tags like !!python/object that build Python objects are refused; "
                         "write plain mappings, lists, strings, numbers and booleans")
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in seen:
                raise SpaceError(file, ".".join(map(str, keys + (key,))),
                                 f"duplicate key (line {seen[key]} and line {key_node.start_mark.line + 1}); "
                                 "a YAML mapping may set each key once")
            seen[key] = key_node.start_mark.line + 1
            _check_nodes(file, key_node, keys)
            _check_nodes(file, value_node, keys + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_nodes(file, item, keys + (index,))



def _resolve_path(file: str, where: str, value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise SpaceError(file, where, f"environment variable in {value!r} is not set")
    if "://" in expanded:  # a URI (s3://...: a checkpoint on object storage) is no path to resolve
        return expanded
    path = Path(expanded)
    return str(path if path.is_absolute() else (base / path).resolve())


PATH_KEYS = {"data": ("train", "eval"), "model": ("init_from",)}  # trial keys that hold paths


def resolve_paths(file: str, trial: dict, base: Path) -> None:
    """Data folders and ``model.init_from`` relative to the space file (inside grid/choice values too)."""
    for section, keys in PATH_KEYS.items():
        node = trial.get(section)
        primitive = kp.primitive(node)
        entries = primitive[1] if primitive and isinstance(primitive[1], list) else [node]
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for key in keys:
                value = entry.get(key)
                where = f"trial.{section}.{key}"
                primitive = kp.primitive(value)
                if primitive is None:
                    if value is not None:
                        entry[key] = _resolve_path(file, where, value, base)
                elif primitive[0] in ("grid", "choice") and isinstance(primitive[1], list):
                    value[primitive[0]] = [_resolve_path(file, where, v, base) for v in primitive[1]]



def load_space(path: str | Path, check_data: bool = True, stored: bool = False) -> SearchSpec:
    """Read, validate and resolve a space file; raise :class:`SpaceError` on any problem.

    ``stored``: the file is a search's own stored copy, whose renamed keys (written before the
    rename) are read under their new names instead of refused (:mod:`search.space.renamed`)."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise SpaceError(file, "", "file not found")
    raw = load_yaml(file, path.read_text())
    if stored:
        upgrade_renamed(raw)
    refuse_renamed(file, raw)
    if not isinstance(raw, dict):
        raise SpaceError(file, "", "a space file is a mapping with keys " + ", ".join(SpaceFile.model_fields)
                         + f"; got {type(raw).__name__}")
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise pydantic_error(file, SpaceFile, error, "") from None
    if kp.primitive(space.trial) is not None:
        raise SpaceError(file, "trial", "the trial section is a mapping of trial keys (model, data, loss, "
                         "schedule, performance); put sampling primitives on its values")
    check_structure(file, space.trial)
    resolve_paths(file, space.trial, path.parent)
    trial, variants = split_labels(file, space.trial)  # the file keeps its labels (the search's stored copy)
    spec = SearchSpec(path.resolve(), space, variants, trial)
    check_spec(file, spec, check_data)
    return spec



def load_stored_space(store, file: str) -> SearchSpec:
    """A search's stored space copy (``file`` in the experiment folder ``store``, local or remote), validated
    without walking the training folders again (the search's index lists them)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / Path(file).name
        local.write_text(store.read_text(file))
        return load_space(local, check_data=False, stored=True)
