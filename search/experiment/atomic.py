"""Replacing a state file of ours whole or not at all, on a local disk or on remote storage.

Local: :func:`trainables.atomic_file.write_atomically` (temporary file, fsync, rename). Remote (a pyarrow
filesystem: S3, GCS, ...): the bytes go to a temporary object beside the target, which is then moved over it;
an object store replaces an object in one step, and a write cut short (pyarrow completes an upload even when
the writing code raised) only ever reaches the temporary object. Every state file the search writes
(``ladder.json``, the state file, driver records, the tracking journal, searcher and scheduler state) goes
through here."""

from __future__ import annotations

import uuid
from typing import BinaryIO, Callable

import pyarrow.fs

from trainables.atomic_file import write_atomically


def write_file(filesystem: pyarrow.fs.FileSystem, path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` on ``filesystem`` through ``write(stream)``: the previous content stays until it is whole."""
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        write_atomically(path, write)
        return
    folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
    temp = f"{folder}/.{name}.{uuid.uuid4().hex[:12]}.tmp" if folder else f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with filesystem.open_output_stream(temp) as stream:
            write(stream)
        filesystem.move(temp, path)
    except BaseException:
        try:
            filesystem.delete_file(temp)
        except OSError:
            pass
        raise


def write_text(filesystem: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    data = text.encode()
    write_file(filesystem, path, lambda stream: stream.write(data))


def write_local_text(path: str, text: str) -> None:
    """A local state file (what Ray asks searchers and schedulers to save into its experiment checkpoint)."""
    write_text(pyarrow.fs.LocalFileSystem(), path, text)


__all__ = ["write_file", "write_text", "write_local_text"]
