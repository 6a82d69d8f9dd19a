"""What the search will train and evaluate on: image counts, the crop-size check, skipped files.

Checked before Ray starts (from ``_check_data`` of the space validation):

- the number of training images listed (a folder walked recursively, or a list file) and
  of evaluation images, noting when the evaluation folder is the 24-image Kodak set;
- ``data.crop_size`` against the largest training image side: a crop larger than twice it
  is an error (padding that much invents most of every crop). Sizes come from image
  headers only: every header of a small set (at most ``SMALL_SET_FILES`` files), an evenly
  spread sample of ``HEADER_SAMPLE`` headers of a larger one, so a large set may hide a few
  bigger images; nothing is decoded.

After the search, :func:`skipped_images` gathers each trial's count of unreadable training
files (``data/skipped_images``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from PIL import Image

from search.errors import SpaceError
from trainables import metrics as M
from trainables.config import DataConfig
from trainables.data.file_index import TrainingFiles, list_training_files
from trainables.data.images import SMALL_SET_FILES, list_images

HEADER_SAMPLE = 200  # headers read from a large training set for the crop-size check
KODAK_NAMES = frozenset(f"kodim{i:02d}.png" for i in range(1, 25))


@dataclass(frozen=True)
class HeaderScan:
    """Image sizes read from headers: all files of a small set, a sample of a large one."""

    read: int  # headers read successfully
    tried: int  # headers tried
    largest_side: Optional[int]  # None when no header could be read


@dataclass
class DataSummary:
    """One (training source, evaluation folder) pair of the space."""

    train: str
    train_images: int
    train_is_list: bool
    headers: HeaderScan
    eval: str
    eval_images: int
    eval_is_kodak: bool
    crop_sizes: list[int] = field(default_factory=list)

    def describe(self) -> str:
        kind = "list file" if self.train_is_list else "folder, searched recursively"
        scan = self.headers
        if scan.largest_side is None:
            sizes = f"no readable header among {scan.tried} tried"
        else:
            which = "all headers" if scan.tried == self.train_images else f"headers of {scan.tried} sampled files"
            sizes = f"largest image side {scan.largest_side} px ({which}"
            sizes += f", {scan.tried - scan.read} unreadable)" if scan.read < scan.tried else ")"
        kodak = " (the 24-image Kodak set)" if self.eval_is_kodak else ""
        return (f"training images: {self.train_images:,} in {self.train} ({kind}; {sizes})\n"
                f"evaluation images: {self.eval_images} in {self.eval}{kodak}")


_scans: "weakref.WeakKeyDictionary[TrainingFiles, HeaderScan]" = weakref.WeakKeyDictionary()


def scan_headers(files: TrainingFiles) -> HeaderScan:
    """Largest image side from the headers of all files (small sets) or a spread sample."""
    if files in _scans:
        return _scans[files]
    count = len(files) if len(files) <= SMALL_SET_FILES else HEADER_SAMPLE
    indices = files.sample(count)
    largest, read = None, 0
    for index in indices:
        try:
            with Image.open(files.path(index)) as image:
                side = max(image.size)
        except Exception:  # noqa: BLE001  (broken files are skipped in training too)
            continue
        read += 1
        largest = side if largest is None else max(largest, side)
    scan = HeaderScan(read, len(indices), largest)
    _scans[files] = scan
    return scan


def _is_kodak(paths: list[Path]) -> bool:
    return len(paths) == len(KODAK_NAMES) and {p.name.lower() for p in paths} == KODAK_NAMES


def check_training_data(file: str, datas: Iterable[DataConfig]) -> list[DataSummary]:
    """Count the images of every data source of the space and check ``data.crop_size``.

    Raises :class:`SpaceError` at ``trial.data.crop_size`` when a crop is larger than twice
    the largest training image side found.
    """
    summaries: dict[tuple[str, str], DataSummary] = {}
    for data in datas:
        key = (str(data.train), str(data.eval))
        summary = summaries.get(key)
        if summary is None:
            files = list_training_files(Path(data.train))
            evals = list_images(Path(data.eval))
            summary = DataSummary(str(data.train), len(files), not Path(data.train).is_dir(), scan_headers(files),
                                  str(data.eval), len(evals), _is_kodak(evals))
            summaries[key] = summary
        if data.crop_size not in summary.crop_sizes:
            summary.crop_sizes.append(data.crop_size)
        largest = summary.headers.largest_side
        crop = max(data.stage_crops())  # crop_size, or the largest crop_schedule stage
        if largest is not None and crop > 2 * largest:
            scan = summary.headers
            which = ("all headers read" if scan.tried == summary.train_images
                     else f"headers of {scan.tried} of {summary.train_images:,} files sampled")
            key = "crop_schedule" if data.crop_schedule else "crop_size"
            raise SpaceError(file, f"trial.data.{key}",
                             f"{crop} is more than twice the largest training image side found, "
                             f"{largest} px, in {data.train} ({which}); use "
                             f"{'stage crops' if data.crop_schedule else 'a crop_size'} of at most "
                             f"{2 * largest} (smaller images are padded or resized to the crop)")
    return list(summaries.values())


@dataclass(frozen=True)
class SkippedImages:
    """Unreadable training files skipped, per trial (the last count each reported) and in total,
    with the training files each trial listed."""

    per_trial: dict[str, int]
    listed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_trial.values())

    def describe(self) -> str:
        sizes = sorted(set(self.listed.values()))
        listed = f"training images listed: {', '.join(f'{n:,}' for n in sizes)}; " if sizes else ""
        hit = {trial: n for trial, n in self.per_trial.items() if n}
        if not hit:
            return f"{listed}unreadable training images skipped: none"
        worst = max(hit, key=hit.get)
        return (f"{listed}unreadable training images skipped: {self.total} in total over {len(hit)} trial(s) "
                f"(most: {hit[worst]} in {worst})")


def skipped_images(results) -> SkippedImages:
    """Each trial's last ``data/skipped_images`` from a Ray Tune ``ResultGrid`` (or results list)."""
    per_trial: dict[str, int] = {}
    listed: dict[str, int] = {}
    for result in results:
        metrics = getattr(result, "metrics", None) or {}
        trial = str(metrics.get("trial_id", getattr(result, "path", "?")))
        per_trial[trial] = int(metrics.get(M.DATA_SKIPPED_IMAGES, 0) or 0)
        if metrics.get(M.DATA_TRAIN_IMAGES):
            listed[trial] = int(metrics[M.DATA_TRAIN_IMAGES])
    return SkippedImages(per_trial, listed)
