"""Image folders for training and evaluation.

Training images come from :mod:`trainables.data.file_index` (a folder searched recursively, or a
list file; in a search, the index the driver wrote). PNG, JPEG, TIFF, BMP or WebP files (RGB,
grayscale, alpha, palette, 16-bit, CMYK) become 8-bit RGB. Training draws random crops (paper
Section 5.1 trains on random 256×256 crops, CompressAI's ``RandomCrop``; no flips, as in that recipe). Evaluation uses
whole images, padded to the backbone's multiple, with metrics on the unpadded area.

Exact resume: batch ``k`` of a run is a pure function of ``(seed, k)``. Sample ``s = k·B + b``
picks its image from a per-epoch permutation seeded by ``(seed, epoch)`` (every image once
per epoch, like a shuffled CompressAI ``ImageFolder``; a keyed Feistel bijection evaluated per
sample, so an epoch of 1.28 M images costs nothing to set up) and its crop offset from a
``torch.Generator`` seeded by ``(seed, s)``. No worker or global RNG is involved, so a trial
restored at iteration ``k`` sees the same batches as the uninterrupted run, with any number
of DataLoader workers.

Small sets (at most :data:`SMALL_SET_FILES` files) read every header up front and are
cached in memory when they fit; larger sets read nothing up front: a file that cannot be
decoded is found when first drawn and replaced by the next readable file in the list (a
pure function of the file list, so of ``(seed, k)`` too), counted, and reported by the
loader as :data:`trainables.metrics.DATA_SKIPPED_IMAGES`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from trainables import metrics as M
from trainables.config import DataConfig
from trainables.data.crop_schedule import CropPlan
from trainables.data.file_index import (
    IMAGE_SUFFIXES,
    TrainingFiles,
    list_training_files,
    training_files,
)
from trainables.errors import DataError
from trainables.shard import Shard

__all__ = [
    "IMAGE_SUFFIXES",
    "CACHE_LIMIT_BYTES",
    "ImageDecodeError",
    "SkippedImagesWarning",
    "list_images",
    "load_rgb8",
    "ImageSet",
    "LazyImages",
    "SMALL_SET_FILES",
    "open_training_images",
    "TrainBatches",
    "fit_to_crop",
    "TrainCrops",
    "resolve_num_workers",
    "make_train_loader",
    "load_eval_images",
    "pad_to_multiple",
    "crop_to",
    "check_data_config",
]

# Above this many training files nothing is read up front (124 µs a header on a warm local
# disk: 5,000 files cost 0.6 s per trial start; ImageNet's 1.28 M would cost minutes).
SMALL_SET_FILES = 5000

# cache="auto" keeps decoded images in memory when their total size (H·W·3 bytes, read from
# the file headers) is below this. Workers are forked, so they share the parent's copy.
CACHE_LIMIT_BYTES = 2 * 1024**3

# How many skipped file names one warning lists before summarising the rest.
_NAMES_SHOWN = 20


class ImageDecodeError(DataError):
    """One file cannot be decoded as an image (not an image, truncated, unsupported mode)."""


class SkippedImagesWarning(UserWarning):
    """Unreadable files were left out of an image folder."""


# --------------------------------------------------------------------------- files
def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name.

    Raises :class:`DataError` naming the folder when it is missing, not a folder, or holds
    no file with an image suffix. Sub-folders are not searched.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"image folder {folder} holds no image files "
                        f"(looked for {', '.join(IMAGE_SUFFIXES)}, any case)")
    return files


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 → 0..255 by rounding v·255/65535 (= v/257): full range kept, nothing clipped."""
    values = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(values / 257.0).astype(np.uint8)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale PNG/TIFF (Pillow's "I;16*" or, from some writers, 32-bit "I").
        gray = _scale_16bit(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        # Float images: [0, 1] when they fit there, otherwise taken as 0..255.
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        gray = np.rint(np.clip(np.nan_to_num(values * scale), 0, 255)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "1":
        image = image.convert("L")
    if image.mode != "RGB":
        # L, LA, RGBA, PA, CMYK, YCbCr, ...: Pillow's conversion; alpha is dropped.
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)  # a writable copy (Pillow's buffer view is read-only)


def load_rgb8(path: Path) -> np.ndarray:
    """Decode one image file to an (H, W, 3) uint8 RGB array.

    - grayscale (L, 1) is repeated to three channels; CMYK/YCbCr use Pillow's conversion
      (embedded ICC profiles are not applied);
    - alpha (LA, RGBA, PA, palette transparency) is **dropped**, not composited: the stored
      colour values are what the codec sees, as with CompressAI's ``convert("RGB")``;
    - 16-bit grayscale (``I;16`` PNG/TIFF) is scaled by v/257 rounded, so 65535 → 255 and
      nothing is clipped; 16-bit RGB PNG/TIFF is reduced by Pillow to its high byte (v >> 8);
    - multi-frame files (animated WebP, multi-page TIFF) give their first frame.

    Raises :class:`ImageDecodeError` naming the file for anything unreadable, truncated files
    included (the full image is decoded here, not just the header).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            array = _to_rgb8(image)
    except Exception as error:  # Pillow raises many types for broken files (OSError, SyntaxError, ...)
        raise ImageDecodeError(f"cannot read image {path}: {error}") from error
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageDecodeError(f"cannot read image {path}: decoded to unexpected shape {array.shape}")
    return array


def _warn_skipped(folder: Path, skipped: Sequence[tuple[Path, str]], kept: int) -> None:
    """One warning per folder load: how many files were skipped, which, and why."""
    if not skipped:
        return
    shown = "; ".join(f"{path.name} ({reason})" for path, reason in skipped[:_NAMES_SHOWN])
    more = f"; and {len(skipped) - _NAMES_SHOWN} more" if len(skipped) > _NAMES_SHOWN else ""
    warnings.warn(f"skipped {len(skipped)} unreadable image file(s) in {folder} (kept {kept}): {shown}{more}",
                  SkippedImagesWarning, stacklevel=3)


def _reason(error: Exception) -> str:
    cause = error.__cause__ if error.__cause__ is not None else error
    return f"{type(cause).__name__}: {cause}"


@dataclass(frozen=True)
class _Entry:
    path: Path
    height: int
    width: int


class ImageSet:
    """The readable images of a small training set, decoded to RGB8, optionally cached in memory.

    ``source`` is a folder (searched recursively), a list file, or :class:`TrainingFiles`.

    Every file's header is read up front (size, and catching non-images). With the cache
    on, every file is also fully decoded up front, so truncated files are caught here too;
    all skipped files are reported in ONE :class:`SkippedImagesWarning`. With the cache off
    (``cache="never"``, or ``"auto"`` above ``cache_limit_bytes``) images are decoded on
    each access, and a file whose header is fine but whose data is truncated raises
    :class:`ImageDecodeError` at access time (:class:`TrainCrops` then skips it, warning).
    """

    def __init__(self, source: Union[Path, TrainingFiles], cache: Literal["auto", "always", "never"] = "auto",
                 cache_limit_bytes: int = CACHE_LIMIT_BYTES) -> None:
        if cache not in ("auto", "always", "never"):
            raise DataError(f"cache must be one of 'auto', 'always', 'never', got {cache!r}")
        files = source if isinstance(source, TrainingFiles) else list_training_files(Path(source))
        self.folder = Path(files.source)
        self.listed = len(files)
        skipped: list[tuple[Path, str]] = []
        entries: list[_Entry] = []
        for path in files.paths():
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except Exception as error:  # not an image, or an unreadable header
                skipped.append((path, f"{type(error).__name__}: {error}"))
                continue
            entries.append(_Entry(path, height, width))
        self.estimated_bytes = sum(e.height * e.width * 3 for e in entries)
        self.cached = cache == "always" or (cache == "auto" and self.estimated_bytes < cache_limit_bytes)
        self._arrays: Optional[list[np.ndarray]] = None
        if self.cached:
            kept, arrays = [], []
            for entry in entries:
                try:
                    arrays.append(load_rgb8(entry.path))
                except ImageDecodeError as error:
                    skipped.append((entry.path, _reason(error)))
                    continue
                kept.append(_Entry(entry.path, *arrays[-1].shape[:2]))
            entries, self._arrays = kept, arrays
        skipped.sort(key=lambda item: item[0].name)
        self.skipped: list[tuple[Path, str]] = skipped
        self._entries = entries
        if not entries:
            raise DataError(f"image folder {self.folder} holds no readable image "
                            f"({len(skipped)} file(s) failed to decode: "
                            + "; ".join(f"{p.name} ({r})" for p, r in skipped[:_NAMES_SHOWN]) + ")")
        _warn_skipped(self.folder, skipped, len(entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> np.ndarray:
        """The (H, W, 3) uint8 image ``index`` (cached arrays are shared: do not modify)."""
        if self._arrays is not None:
            return self._arrays[index]
        return load_rgb8(self._entries[index].path)

    @property
    def paths(self) -> list[Path]:
        return [e.path for e in self._entries]

    def path(self, index: int) -> Path:
        return self._entries[index].path

    def size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` from its header, without decoding."""
        entry = self._entries[index]
        return entry.height, entry.width


class LazyImages:
    """A large training set: nothing read up front, every access decodes its file.

    A file that cannot be decoded (including a missing one) raises
    :class:`ImageDecodeError` when accessed; :class:`TrainCrops` skips and counts it.
    """

    cached = False

    def __init__(self, files: TrainingFiles) -> None:
        self.files = files
        self.folder = Path(files.source)
        self.listed = len(files)
        self.skipped: list[tuple[Path, str]] = []  # nothing is checked up front

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        return load_rgb8(Path(self.files.path(index)))

    @property
    def paths(self) -> list[Path]:
        return self.files.paths()

    def path(self, index: int) -> Path:
        return Path(self.files.path(index))


def open_training_images(cfg: DataConfig) -> Union[ImageSet, LazyImages]:
    """The training images of ``cfg.train`` (from the search's index when one is in use).

    At most :data:`SMALL_SET_FILES` files, or ``cache: always``: an :class:`ImageSet`
    (headers read, cached when small); more: :class:`LazyImages`.
    """
    files = training_files(Path(cfg.train))
    if len(files) <= SMALL_SET_FILES or cfg.cache == "always":
        return ImageSet(files, cache=cfg.cache)
    return LazyImages(files)


# ------------------------------------------------------------------------ training
def _pad_mode_per_axis(size: int, pad: int) -> str:
    # Reflection needs pad <= size - 1 (it mirrors without repeating the edge pixel).
    return "reflect" if pad <= size - 1 else "edge"


def fit_to_crop(image: np.ndarray, crop: int, small_images: Literal["pad", "resize"]) -> np.ndarray:
    """Make an (H, W, 3) image at least ``crop`` on both sides; larger images pass unchanged.

    ``pad``: centred reflect padding of each short side (replicate where the side is too
    short to reflect, i.e. pad ≥ side). ``resize``: bicubic upscale keeping the aspect
    ratio until the shorter side equals ``crop`` (never downscales).
    """
    height, width = image.shape[:2]
    if height >= crop and width >= crop:
        return image
    if small_images == "resize":
        scale = crop / min(height, width)
        new_h = max(crop, int(round(height * scale)))
        new_w = max(crop, int(round(width * scale)))
        resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
        return np.array(resized, dtype=np.uint8)
    if small_images != "pad":
        raise DataError(f"small_images must be 'pad' or 'resize', got {small_images!r}")
    out = image
    for axis, size in ((0, height), (1, width)):
        if size >= crop:
            continue
        total = crop - size
        before = total // 2
        widths = [(0, 0), (0, 0), (0, 0)]
        widths[axis] = (before, total - before)
        out = np.pad(out, widths, mode=_pad_mode_per_axis(size, max(before, total - before)))
    return np.ascontiguousarray(out)


_MASK64 = (1 << 64) - 1
_EPOCH_STREAM = 0x45504F4348  # domain tags keep the permutation and crop streams apart
_SAMPLE_STREAM = 0x53414D504C


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class EpochPermutation:
    """A seeded bijection of ``range(count)``, evaluated one position at a time.

    A balanced Feistel network on the smallest even-bit domain holding ``count`` (at most
    4·count values), cycle-walking out-of-range values back into range: O(1) set-up and
    memory per epoch, where ``torch.randperm`` of ImageNet takes 40-70 ms and 10 MB.
    """

    ROUNDS = 6

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        bits = max(2, (count - 1).bit_length())
        self._half = (bits + 1) // 2
        self._mask = (1 << self._half) - 1
        self._keys = [derive_seed(seed, r) for r in range(self.ROUNDS)]

    def __call__(self, position: int) -> int:
        value = position
        while True:
            left, right = value >> self._half, value & self._mask
            for key in self._keys:
                left, right = right, left ^ (_splitmix64(right ^ key) & self._mask)
            value = (left << self._half) | right
            if value < self.count:
                return value


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (SplitMix64 chained), for ``Generator.manual_seed``."""
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


class TrainCrops(Dataset):
    """Map-style dataset: sample index ``s`` → one (3, crop, crop) float crop in [0, 1].

    The crop is a pure function of ``(seed, s)`` (see the module docstring). Images smaller
    than the crop go through :func:`fit_to_crop`; with a cached :class:`ImageSet` that is
    done once here. In lazy mode, an image that fails to decode is replaced by the next
    readable one (deterministically, since the failure is), with one warning per file.
    """

    def __init__(self, images: Union[ImageSet, LazyImages], crop: int, small_images: Literal["pad", "resize"],
                 seed: int) -> None:
        self.images = images
        self.crop = int(crop)
        self.small_images = small_images
        self.seed = int(seed)
        self._fitted: Optional[list[np.ndarray]] = None
        if images.cached:
            self._fitted = [fit_to_crop(images[i], self.crop, small_images) for i in range(len(images))]
        self._epoch: Optional[int] = None
        self._order: Optional[EpochPermutation] = None
        self._broken: set[int] = set()
        self._found: list[tuple[int, str]] = []  # (index, reason) of broken files found since the last item()

    def __len__(self) -> int:
        return len(self.images)  # one epoch; the batch sampler itself is endless

    def _permutation(self, epoch: int) -> EpochPermutation:
        if self._epoch != epoch:
            self._order = EpochPermutation(len(self.images), derive_seed(self.seed, _EPOCH_STREAM, epoch))
            self._epoch = epoch
        assert self._order is not None
        return self._order

    def image_order(self, epoch: int) -> Tensor:
        """The permutation of image indices used in ``epoch`` (all of it: for inspection)."""
        order = self._permutation(epoch)
        return torch.tensor([order(i) for i in range(len(self.images))])

    def _image(self, index: int) -> np.ndarray:
        if self._fitted is not None:
            return self._fitted[index]
        count = len(self.images)
        for step in range(count):
            candidate = (index + step) % count
            if candidate in self._broken:
                continue
            try:
                return fit_to_crop(self.images[candidate], self.crop, self.small_images)
            except ImageDecodeError as error:
                self._broken.add(candidate)
                self._found.append((candidate, _reason(error)))
                warnings.warn(f"skipping unreadable training image: {error}; "
                              f"using the next image instead", SkippedImagesWarning, stacklevel=2)
        raise DataError(f"image folder {self.images.folder} holds no readable image")

    def __getitem__(self, sample: int) -> Tensor:
        return self.item(sample)[0]

    def item(self, sample: int) -> tuple[Tensor, tuple[tuple[int, str], ...]]:
        """The crop of ``sample`` and the (image index, reason) of files this call found unreadable."""
        self._found = []
        sample = int(sample)
        count = len(self.images)
        index = self._permutation(sample // count)(sample % count)
        image = self._image(index)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _SAMPLE_STREAM, sample))
        height, width = image.shape[:2]
        top = int(torch.randint(0, height - self.crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - self.crop + 1, (1,), generator=generator))
        patch = np.ascontiguousarray(image[top:top + self.crop, left:left + self.crop])
        return torch.from_numpy(patch).permute(2, 0, 1).float().div_(255.0), tuple(self._found)


class _CropsWithSkips(Dataset):
    """What the DataLoader draws: each crop with the unreadable files found making it, so the
    counts reach the main process from any worker. With a crop schedule the sampler draws
    ``(sample, crop)`` pairs, served by one :class:`TrainCrops` per crop size."""

    def __init__(self, crops: TrainCrops, staged: Optional[dict[int, TrainCrops]] = None) -> None:
        self.crops = crops
        self.staged = staged or {}

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, sample: Union[int, tuple[int, int]]) -> tuple[Tensor, tuple[tuple[int, str], ...]]:
        if isinstance(sample, tuple):
            index, crop = sample
            return self.staged[crop].item(index)
        return self.crops.item(sample)


def _collate(items: list[tuple[Tensor, tuple[tuple[int, str], ...]]]) -> tuple[Tensor, list[tuple[int, str]]]:
    return torch.stack([crop for crop, _ in items]), [index for _, found in items for index in found]


class TrainBatches:
    """The endless batch iterator of :func:`make_train_loader`, counting skipped files."""

    def __init__(self, loader: DataLoader, images: Union[ImageSet, LazyImages], staged: bool = False) -> None:
        self._batches = iter(loader)
        self.listed = images.listed
        self.images = images
        self.skipped_up_front = len(images.skipped)
        self.broken: dict[int, str] = {}  # image index -> why it could not be read, in the order found
        self._listed_skips = 0  # how many skipped files the last data_metrics() listed
        self.staged = staged  # a crop_schedule: report the crop size too
        self.crop: Optional[int] = None  # of the last batch

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> Tensor:
        batch, found = next(self._batches)
        for index, reason in found:
            self.broken.setdefault(index, reason)
        self.crop = int(batch.shape[-1])
        return batch

    @property
    def skipped(self) -> int:
        """Unreadable files skipped so far: up front (small sets) plus found when drawn."""
        return self.skipped_up_front + len(self.broken)

    def data_metrics(self) -> dict[str, float]:
        """``data/train_images`` and ``data/skipped_images``, reported with every evaluation
        (and ``train/crop_size``, the last batch's crop, when the crops are staged)."""
        metrics: dict[str, Any] = {M.DATA_TRAIN_IMAGES: float(self.listed),
                                   M.DATA_SKIPPED_IMAGES: float(self.skipped)}
        if self.staged and self.crop is not None:
            metrics[M.TRAIN_CROP_SIZE] = float(self.crop)
        if self.skipped > self._listed_skips:  # the file names, when there are new ones (M.SKIPPED_FILES)
            self._listed_skips = self.skipped
            metrics[M.SKIPPED_FILES] = "\n".join(f"{path}\t{reason}" for path, reason in self.skipped_files())
        return metrics

    def skipped_files(self, limit: int = M.SKIPPED_FILES_LISTED) -> list[tuple[str, str]]:
        """(path, reason) of the unreadable files skipped so far, up front first, at most ``limit``."""
        found = [(str(path), reason) for path, reason in self.images.skipped[:limit]]
        for index, reason in self.broken.items():
            if len(found) >= limit:
                break
            found.append((str(self.images.path(index)), reason))
        return found


class _EndlessBatches:
    """Batch sampler: [k·B, ..., k·B + B − 1] for k = start, start + 1, ... forever (with a shard,
    only its rows of each global batch: rank r of N takes [k·B + r·B/N, ..., k·B + (r+1)·B/N − 1])."""

    def __init__(self, batch_size: int, start_iteration: int, plan: Optional[CropPlan] = None,
                 shard: Optional[Shard] = None) -> None:
        self.batch_size = batch_size
        self.start_iteration = start_iteration
        self.plan = plan  # a crop schedule: batch k is [(sample, crop), ...] as the plan says
        self.shard = shard or Shard()

    def __iter__(self) -> Iterator[list]:
        k = self.start_iteration
        while True:
            if self.plan is not None:
                staged = self.plan.batch(k)
                yield [(staged.first_sample + r, staged.crop) for r in self.shard.rows(staged.batch_size)]
            else:
                first = k * self.batch_size
                yield [first + r for r in self.shard.rows(self.batch_size)]
            k += 1


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_num_workers(cfg: DataConfig, device_type: str) -> int:
    """``num_workers`` as configured, else automatic: min(4, CPUs) on CUDA, 0 on CPU.

    On CPU the training step itself uses the cores, so decoding in the main process is
    the better trade; on GPU, workers keep the device fed.
    """
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device_type == "cuda":
        return min(4, _available_cpus())
    return 0


def make_train_loader(cfg: DataConfig, seed: int, start_iteration: int = 0, device_type: str = "cpu",
                      iterations: Optional[int] = None, shard: Optional[Shard] = None) -> TrainBatches:
    """Endless batches (B, 3, crop, crop) float32 in [0, 1]; batch k depends only on (seed, k).

    The first batch yielded is batch ``start_iteration``, so a run restored at iteration k
    continues with exactly the batches the uninterrupted run would have seen. On CUDA the
    batches come in pinned memory (use ``.to(device, non_blocking=True)``). With
    ``cfg.crop_schedule``, ``iterations`` (the budget) places the stages
    (:mod:`trainables.data.crop_schedule`). With ``shard`` (a data-parallel trial) only that
    rank's rows of each global batch are loaded.
    """
    if start_iteration < 0:
        raise DataError(f"start_iteration must be >= 0, got {start_iteration}")
    plan = None
    if cfg.crop_schedule:
        if iterations is None:
            raise DataError("data.crop_schedule needs the iteration budget (make_train_loader iterations=...)")
        plan = CropPlan.of(cfg, iterations)
    images = open_training_images(cfg)
    crops = TrainCrops(images, cfg.crop_size, cfg.small_images, seed)
    staged = {crop: crops if crop == crops.crop else TrainCrops(images, crop, cfg.small_images, seed)
              for crop in plan.crops} if plan else None
    dataset = _CropsWithSkips(crops, staged)
    workers = resolve_num_workers(cfg, device_type)
    on_cuda = device_type == "cuda"
    loader = DataLoader(
        dataset,
        batch_sampler=_EndlessBatches(cfg.batch_size, start_iteration, plan, shard),
        collate_fn=_collate,
        num_workers=workers,
        pin_memory=on_cuda,
        persistent_workers=on_cuda and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # A private generator: iterating a DataLoader otherwise draws its base seed from the
        # global torch RNG, which would shift the training noise of a restored run.
        generator=torch.Generator().manual_seed(derive_seed(seed, start_iteration)),
    )
    return TrainBatches(loader, images, staged=plan is not None)


# ---------------------------------------------------------------------- evaluation
def load_eval_images(cfg: DataConfig) -> list[tuple[str, Tensor]]:
    """The evaluation images as (file name, (1, 3, H, W) float32 in [0, 1]), sorted by name.

    Whole images, no cropping; at most ``cfg.max_eval_images`` readable ones (the first by
    name). Unreadable files are skipped with one warning; none readable → :class:`DataError`.
    """
    folder = Path(cfg.eval)
    limit = cfg.max_eval_images
    images: list[tuple[str, Tensor]] = []
    skipped: list[tuple[Path, str]] = []
    for path in list_images(folder):
        if limit is not None and len(images) >= limit:
            break
        try:
            array = load_rgb8(path)
        except ImageDecodeError as error:
            skipped.append((path, _reason(error)))
            continue
        tensor = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0).unsqueeze(0)
        images.append((path.name, tensor.contiguous()))
    if not images:
        raise DataError(f"image folder {folder} holds no readable image ({len(skipped)} file(s) failed to decode)")
    _warn_skipped(folder, skipped, len(images))
    return images


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) on the bottom and right to multiples of ``multiple``; also return (H, W).

    Replicate padding: unlike zeros it adds no artificial edge for the codec to spend bits
    on, and unlike reflection it works for any pad size (pad ≥ side included). The padded
    area is coded but excluded from metrics: crop the output with :func:`crop_to` and divide
    the bits by the unpadded H·W.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (height, width)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The top-left (H, W) of ``x``: undoes :func:`pad_to_multiple`."""
    height, width = size
    return x[..., :height, :width]


def check_data_config(cfg: DataConfig) -> None:
    """Cheap pre-flight check (run before Ray starts): both folders exist and list images.

    Only names are checked, no decoding (the training folder is walked, or its list read). The
    message says which key failed (``train: image folder ... does not exist``); the error's
    ``key`` attribute holds ``train`` or ``eval``.
    """
    for key in ("train", "eval"):
        folder = getattr(cfg, key)
        try:
            list_training_files(folder) if key == "train" else list_images(folder)
        except DataError as error:
            wrapped = DataError(f"{key}: {error}")
            wrapped.key = key  # type: ignore[attr-defined]
            raise wrapped from None
