"""Writing a file so a crash midway leaves the previous version whole: a temporary file beside it, flushed
and fsynced, then renamed over it (a rename within one folder is atomic on POSIX filesystems)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(stream)`` on a temporary file in ``path``'s folder, fsync it, then rename it over ``path``.
    If ``write`` fails (or the process dies) ``path`` keeps its previous content; the temporary file is removed
    when Python still can."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


__all__ = ["write_atomically"]
