"""A checkpoint named by a path or a URI (``s3://``, ``gs://``, ``file://``...), read through pyarrow's filesystems.

Why: a ladder on ``--storage-path s3://...`` hands its fine-tunes the start point's checkpoint as a URI, and a
trial may run on a node that shares no folder with the start point's. One code path serves both: a local path is
read where it is (nothing copied), a remote checkpoint is copied into a temporary folder first, and either
way the same checksums decide whether it is whole. A trial's ``checkpoint_N`` folder also names its
fallbacks: the same trial's older ``checkpoint_k`` folders (k < N), newest first.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow.fs

from trainables.training.checkpoint import MANIFEST_FILE, STATE_FILE, checkpoint_index

__all__ = ["CheckpointSource", "is_uri"]


def is_uri(location: str) -> bool:
    return "://" in location


class CheckpointSource:
    """One checkpoint (a folder, or a file) on a local or remote filesystem."""

    def __init__(self, location: str, filesystem: pyarrow.fs.FileSystem | None = None, path: str | None = None):
        self.location = str(location)
        if filesystem is not None and path is not None:
            self.filesystem, self.path = filesystem, path
        elif is_uri(self.location):
            self.filesystem, self.path = pyarrow.fs.FileSystem.from_uri(self.location)
        else:
            self.filesystem, self.path = pyarrow.fs.LocalFileSystem(), str(Path(self.location))

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    def _sibling(self, path: str) -> "CheckpointSource":
        """Another checkpoint beside this one: its location in this one's form (a URI keeps its scheme)."""
        location, own = self.location.rstrip("/"), self.path.rstrip("/")
        prefix = location[:len(location) - len(own)] if location.endswith(own) else ""  # "s3://", or none
        return CheckpointSource(prefix + path, self.filesystem, path)

    def with_older(self) -> list["CheckpointSource"]:
        """This checkpoint, then (when it is a trial's ``checkpoint_N`` folder) the trial's older ones, newest first."""
        path = self.path.rstrip("/")
        index = checkpoint_index(path)
        if index < 0 or "/" not in path:
            return [self]
        try:
            infos = self.filesystem.get_file_info(pyarrow.fs.FileSelector(path.rsplit("/", 1)[0]))
        except OSError:
            return [self]
        older = sorted((i.path.rstrip("/") for i in infos if i.type == pyarrow.fs.FileType.Directory
                        and 0 <= checkpoint_index(i.path) < index), key=checkpoint_index, reverse=True)
        return [self] + [self._sibling(p) for p in older]

    @contextlib.contextmanager
    def fetched(self) -> Iterator[Path]:
        """The checkpoint as a local path (a folder, or a file) while the block runs: where it is when local, else
        a temporary copy (a ``state.pt`` is copied with its folder, so its checksums come along). A missing one
        yields a path that does not exist: the reader says what was expected."""
        if self.local:
            yield Path(self.path)
            return
        info = self.filesystem.get_file_info(self.path)
        with tempfile.TemporaryDirectory(prefix="lic-search-init-") as temp:
            if info.type == pyarrow.fs.FileType.NotFound:
                yield Path(temp) / "missing" / Path(self.path).name
                return
            folder, name = (self.path, None) if info.type == pyarrow.fs.FileType.Directory else (
                self.path.rsplit("/", 1) if "/" in self.path else ("", self.path))
            copy_folder = name is None or (name == STATE_FILE and self.filesystem.get_file_info(
                f"{folder}/{MANIFEST_FILE}").type == pyarrow.fs.FileType.File)
            local = Path(temp) / Path(folder or "checkpoint").name
            if copy_folder:
                local.mkdir()
                pyarrow.fs.copy_files(folder, str(local), source_filesystem=self.filesystem,
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
                yield local if name is None else local / name
            else:
                pyarrow.fs.copy_files(self.path, str(Path(temp) / name), source_filesystem=self.filesystem,
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
                yield Path(temp) / name

    def __str__(self) -> str:
        return self.location
