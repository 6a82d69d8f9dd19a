"""The list of training files: found once, stored as a compact index, read by every trial.

``data.train`` is a folder, searched recursively (ImageNet's ``train/<class>/*.JPEG``;
hidden files and folders and files without an image suffix are ignored), or a text file
listing image paths, one a line, relative to the list's folder (absolute paths, blank lines
and ``#`` comments allowed). Names are kept in sorted order, so the sample order of a seed
depends on the set of files, not on the order a file system lists them in.

Walking ImageNet's 1.28 M files costs seconds on a local disk and minutes on a cluster file
system, so a search walks once (in its driver) and writes an index file
(:func:`TrainingFiles.to_bytes`); trials get ``{train path: index location}`` through
:func:`use_train_indexes` and read it with :func:`load_index`, which memory-maps a local
index (no per-name Python objects: 1.28 M names load in milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from trainables.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES", "TrainingFiles", "walk_images", "read_list_file", "list_training_files",
    "load_index", "use_train_indexes", "training_files", "remembered_walks",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

_MAGIC = b"LICIDX1\n"
_ALIGN = 8


class TrainingFiles:
    """Image paths as one byte blob (names joined by ``\\n``) plus an offsets array.

    ``root`` is the folder the names are relative to (absolute names ignore it). A few
    hundred bytes of Python objects however many files: the blob and offsets may be views
    of a memory-mapped index file.
    """

    def __init__(self, root: str, blob: bytes | memoryview, offsets: np.ndarray, source: str) -> None:
        self.root = root
        self.source = source  # what data.train said: the folder or the list file
        self._blob = blob
        self._offsets = offsets

    @classmethod
    def from_names(cls, root: str, names: list[str], source: str) -> "TrainingFiles":
        encoded = [name.encode("utf-8", "surrogateescape") for name in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(e) + 1 for e in encoded], out=offsets[1:])
        return cls(root, b"\n".join(encoded) + (b"\n" if encoded else b""), offsets, source)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def name(self, index: int) -> str:
        """The name as listed (relative to :attr:`root`, or absolute)."""
        start, end = int(self._offsets[index]), int(self._offsets[index + 1]) - 1
        return bytes(self._blob[start:end]).decode("utf-8", "surrogateescape")

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.name(index))

    def paths(self) -> list[Path]:
        return [Path(self.path(i)) for i in range(len(self))]

    def sample(self, count: int) -> list[int]:
        """At most ``count`` indices spread evenly over the sorted list (for header checks)."""
        total = len(self)
        if total <= count:
            return list(range(total))
        return sorted({int(i) for i in np.linspace(0, total - 1, count)})

    # ------------------------------------------------------------ index file
    def to_bytes(self) -> bytes:
        """The index file: magic, a JSON header line, padding, int64 offsets, the name blob."""
        header = json.dumps({"root": self.root, "source": self.source, "count": len(self)}).encode() + b"\n"
        head = _MAGIC + header
        head += b" " * ((-len(head)) % _ALIGN)
        return head + self._offsets.astype("<i8").tobytes() + bytes(self._blob)

    @classmethod
    def from_buffer(cls, buffer, where: str) -> "TrainingFiles":
        view = memoryview(buffer)
        if bytes(view[:len(_MAGIC)]) != _MAGIC:
            raise DataError(f"{where} is not a lic-search training index")
        end = bytes(view[len(_MAGIC):len(_MAGIC) + 65536]).find(b"\n")
        if end < 0:
            raise DataError(f"{where}: training index header is unreadable")
        header = json.loads(bytes(view[len(_MAGIC):len(_MAGIC) + end]))
        start = len(_MAGIC) + end + 1
        start += (-start) % _ALIGN
        count = int(header["count"])
        offsets = np.frombuffer(view, dtype="<i8", count=count + 1, offset=start)
        blob = view[start + 8 * (count + 1):]
        if len(blob) != int(offsets[-1]):
            raise DataError(f"{where}: training index is truncated ({len(blob)} of {int(offsets[-1])} bytes)")
        return cls(header["root"], blob, offsets, header.get("source", header["root"]))


# ---------------------------------------------------------------- finding files
def walk_images(root: Path) -> list[str]:
    """Image files under ``root`` at any depth, as sorted relative POSIX names.

    Hidden entries (a name starting with ``.``) are skipped, folders included; symbolic
    links to folders are followed once (a link cycle is not walked twice).
    """
    names: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [("", os.fspath(root))]
    while stack:
        prefix, folder = stack.pop()
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # an unreadable sub-folder: its images cannot be used anyway
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append((f"{prefix}{entry.name}/", entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    names.append(prefix + entry.name)
            except OSError:
                continue  # a dangling link
    names.sort()
    return names


def read_list_file(path: Path) -> list[str]:
    """Image paths listed in a text file: one a line, blanks and ``#`` comments ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except UnicodeDecodeError as error:  # pragma: no cover - surrogateescape decodes any bytes
        raise DataError(f"image list {path} is not a text file: {error}") from None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


_walk_memo: Optional[dict[str, TrainingFiles]] = None


@contextlib.contextmanager
def remembered_walks() -> Iterator[None]:
    """Within the block, a folder is walked at most once (validation, then the index build)."""
    global _walk_memo
    outer = _walk_memo
    _walk_memo = {} if outer is None else outer
    try:
        yield
    finally:
        _walk_memo = outer


def list_training_files(train: Path) -> TrainingFiles:
    """Walk the folder, or read the list file, ``data.train`` names (see the module docstring).

    Raises :class:`DataError` naming the path when it is missing or lists no image.
    """
    train = Path(train)
    key = os.fspath(train)
    if _walk_memo is not None and key in _walk_memo:
        return _walk_memo[key]
    if not train.exists():
        raise DataError(f"image folder {train} does not exist")
    if train.is_dir():
        files = TrainingFiles.from_names(os.fspath(train), walk_images(train), key)
        if not len(files):
            raise DataError(f"image folder {train} holds no image files, at any depth "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)}, any case; hidden files ignored)")
    else:
        files = TrainingFiles.from_names(os.fspath(train.parent), read_list_file(train), key)
        if not len(files):
            raise DataError(f"image list {train} lists no image path (one path a line, relative to its folder)")
    if _walk_memo is not None:
        _walk_memo[key] = files
    return files


# ------------------------------------------------------------------- the index
def load_index(location: str) -> TrainingFiles:
    """Read an index file: a local path is memory-mapped, a URI (s3://, gs://...) read via pyarrow."""
    import pyarrow

    try:
        if "://" in location and not location.startswith("file://"):
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(location)
            with fs.open_input_file(path) as stream:
                buffer = stream.read_buffer()
        else:
            buffer = pyarrow.memory_map(location.removeprefix("file://")).read_buffer()
    except (OSError, pyarrow.ArrowException) as error:
        raise DataError(f"cannot read training index {location}: {error}") from None
    return TrainingFiles.from_buffer(buffer, location)


_indexes: dict[str, str] = {}


@contextlib.contextmanager
def use_train_indexes(indexes: Optional[dict[str, str]]) -> Iterator[None]:
    """Within the block, ``data.train`` paths in ``indexes`` are read from their index, not walked."""
    saved = dict(_indexes)
    _indexes.update({os.fspath(Path(train)): location for train, location in (indexes or {}).items()})
    try:
        yield
    finally:
        _indexes.clear()
        _indexes.update(saved)


def training_files(train: Path) -> TrainingFiles:
    """The training files of ``data.train``: from its index when one is in use, else found now."""
    location = _indexes.get(os.fspath(train))
    if location is not None:
        return load_index(location)
    return list_training_files(train)
