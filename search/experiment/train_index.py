"""The search's training index: every ``data.train`` of a space listed once, by the driver.

``run`` walks each training folder (or reads each list file) once and writes the list to
``train_index/`` in the experiment folder, through the experiment's filesystem (local
path or URI, like Ray's own state), with a manifest ``train_index/manifest.json``. Trials
read the index (:mod:`trainables.training.indexed_trainable`); ``resume`` reuses the manifest's
indexes unchanged, so a resumed search trains on the same list in the same order even if
files were added to the folder since.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from search.errors import LicSearchError
from search.experiment.atomic import write_file
from search.experiment.store import ExperimentStore
from trainables.data.file_index import list_training_files
from trainables.errors import DataError

INDEX_FOLDER = "train_index"
MANIFEST = f"{INDEX_FOLDER}/manifest.json"


@dataclass
class IndexEntry:
    """One training source's index, as the manifest records it."""

    file: str  # relative to the experiment folder
    count: int
    seconds: float  # time to walk the folder and write the index


def train_sources(spec) -> list[str]:
    """The distinct ``data.train`` values any trial of the space can get (resolved paths)."""
    sources: list[str] = []
    for config in spec.configs():
        train = str(Path(config["data"]["train"]))  # the spelling trials look up (os.fspath of a Path)
        if train not in sources:
            sources.append(train)
    return sources


def _index_file(source: str) -> str:
    return f"{INDEX_FOLDER}/{hashlib.sha1(source.encode()).hexdigest()[:16]}.idx"


def _read_manifest(store: ExperimentStore) -> dict[str, IndexEntry]:
    if not store.exists(MANIFEST):
        return {}
    raw = json.loads(store.read_text(MANIFEST))
    return {source: IndexEntry(**entry) for source, entry in raw.get("indexes", {}).items()}


def build_index(store: ExperimentStore, source: str) -> IndexEntry:
    """List ``source`` (walk the folder or read the list file) and write its index into the experiment."""
    started = time.perf_counter()
    try:
        files = list_training_files(Path(source))
    except DataError as error:
        raise LicSearchError(f"trial.data.train: {error}") from None
    file = _index_file(source)
    store.fs.create_dir(f"{store.path}/{INDEX_FOLDER}", recursive=True)
    data = files.to_bytes()
    write_file(store.fs, f"{store.path}/{file}", lambda stream: stream.write(data))  # whole or not at all
    return IndexEntry(file, len(files), round(time.perf_counter() - started, 3))


def prepare_train_indexes(spec, store: ExperimentStore) -> dict[str, str]:
    """``{data.train: index location}`` for every training source of the space.

    Sources already in the experiment's manifest keep their index (a resumed search);
    the others are listed now and added.
    """
    manifest = _read_manifest(store)
    added = False
    for source in train_sources(spec):
        if source not in manifest:
            manifest[source] = build_index(store, source)
            added = True
    if added:
        store.write_text(MANIFEST, json.dumps(
            {"indexes": {source: asdict(entry) for source, entry in manifest.items()}}, indent=2))
    return {source: f"{store.location}/{entry.file}" for source, entry in manifest.items()}


def index_counts(store: ExperimentStore) -> dict[str, int]:
    """``{data.train: files listed}`` from the manifest (empty before the first run)."""
    return {source: entry.count for source, entry in _read_manifest(store).items()}
