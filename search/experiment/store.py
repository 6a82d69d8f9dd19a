"""The experiment folder, local or remote: a path, or a URI pyarrow understands (s3://, gs://, file://...).

Ray Tune keeps trial checkpoints and its own state there (``storage_path``), so a multi-node
search needs a location every node can reach; lic-search keeps its few small files beside
Ray's, through the same pyarrow filesystem.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pyarrow.fs

from search.experiment.atomic import write_text
from trainables.errors import LicSearchError

NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
NAME_RULE = "letters, digits, _ . - with at least one letter or digit (so never . or ..)"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a search (its MLflow experiment and folder), or None."""
    if not re.match(NAME_PATTERN, name or "") or not re.search(r"[A-Za-z0-9]", name):
        return f"{name!r} is not a search name: use {NAME_RULE}"
    return None


def is_uri(location: str) -> bool:
    return "://" in location


class ExperimentStore:
    """Small text files in one experiment folder."""

    def __init__(self, location: str | Path):
        location = str(location)
        self.location = location.rstrip("/") if is_uri(location) else str(Path(location).resolve())
        if is_uri(self.location):
            self.fs, self.path = pyarrow.fs.FileSystem.from_uri(self.location)
        else:
            self.fs, self.path = pyarrow.fs.LocalFileSystem(), self.location

    @classmethod
    def under(cls, storage_path: str | Path, name: str) -> "ExperimentStore":
        """The folder of search ``name`` in ``storage_path``: always a folder directly inside it (checked after
        resolving symlinks, so neither the name nor a link inside the storage path can point elsewhere)."""
        problem = name_problem(name)
        if problem is not None:
            raise LicSearchError(problem)
        storage = str(storage_path)
        if is_uri(storage):
            return cls(f"{storage.rstrip('/')}/{name}")
        store = cls(Path(storage) / name)
        root = Path(storage).resolve()
        if Path(store.location).parent != root:
            raise LicSearchError(f"the experiment folder of {name!r} resolves to {store.location}, outside the "
                                 f"storage path {root}: pick another name or remove the link {Path(storage) / name}")
        return store

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        """The ``storage_path`` Ray Tune is given (the experiment folder is ``parent/name``)."""
        return self.location.rstrip("/").rsplit("/", 1)[0]

    def create(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def exists(self, file: str) -> bool:
        return self.fs.get_file_info(f"{self.path}/{file}").type == pyarrow.fs.FileType.File

    def read_text(self, file: str) -> str:
        with self.fs.open_input_stream(f"{self.path}/{file}") as stream:
            return stream.read().decode()

    def list(self, folder: str = "", pattern: str = "*", folders: bool = False) -> list[str]:
        """Sorted names of the files (``folders``: the folders) directly in ``folder`` that match ``pattern``;
        none when ``folder`` does not exist. Object stores have no folders, only common key prefixes: the same."""
        wanted = pyarrow.fs.FileType.Directory if folders else pyarrow.fs.FileType.File
        where = f"{self.path}/{folder}".rstrip("/")
        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(where, allow_not_found=True))
        except (OSError, pyarrow.ArrowException):
            return []
        return sorted(i.base_name for i in infos if i.type == wanted and fnmatch.fnmatch(i.base_name, pattern))

    def download(self, folder: str, local: Path) -> Path:
        """Copy ``folder`` of the experiment (a trial's checkpoint, say) into the local folder ``local``: where the
        experiment folder is on this machine already, its own path instead (nothing copied)."""
        if isinstance(self.fs, pyarrow.fs.LocalFileSystem):
            return Path(self.path, folder)
        local.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(f"{self.path}/{folder}", str(local), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return local

    def location_of(self, path: str) -> str:
        """A path on this store's filesystem (as Ray names a checkpoint: ``bucket/...``, no scheme) as a location
        any process can open: the path itself on a local disk, the URI with this store's scheme on remote storage."""
        if isinstance(self.fs, pyarrow.fs.LocalFileSystem) or is_uri(path):
            return path
        prefix = self.location[:len(self.location) - len(self.path)] if self.location.endswith(self.path) else ""
        return prefix + path.lstrip("/") if prefix else path

    def child(self, folder: str) -> "ExperimentStore":
        """The store of a folder inside this one (a ladder's fine-tune phase is its own Ray experiment)."""
        return ExperimentStore(f"{self.location}/{folder}")

    def write_text(self, file: str, text: str) -> None:
        if "/" in file:  # a nested file (drivers/..., train_index/...): local filesystems need its folder
            self.fs.create_dir(f"{self.path}/{file.rsplit('/', 1)[0]}", recursive=True)
        write_text(self.fs, f"{self.path}/{file}", text)  # whole or not at all: a crash keeps the previous one

    def __str__(self) -> str:
        return self.location
