"""R-D curves in CompressAI's results format, read and written in one place.

CompressAI (``compressai.utils.eval_model``) and its published anchors
(``results/image/kodak/*.json``) store a codec as
``{"name", "description", "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...], ...}}``
with one list entry per rate point. Older files say ``psnr`` / ``ms-ssim``; both are read,
the ``-rgb`` spelling is written, so lic-search output plots beside the published curves.

A BD-rate only means something when both curves were measured on the same images. Curves
written by ``lic-search eval`` record their image set (folder, count, sizes) and how their
rate was measured (bitstream bytes, or the likelihood estimate training reports as
``eval/bpp``) under a ``lic_search`` key; the shipped anchors are for the images their
folder names (``anchors/kodak``: the 24 Kodak images). :func:`check_comparable` refuses a
BD-rate across image sets and labels likelihood rates.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from trainables.errors import LicSearchError

BPP_KEY = "bpp"
PSNR_KEYS = ("psnr-rgb", "psnr")  # first one is what we write
MS_SSIM_KEYS = ("ms-ssim-rgb", "ms-ssim")
METRIC_KEYS: dict[str, tuple[str, ...]] = {"psnr": PSNR_KEYS, "ms-ssim": MS_SSIM_KEYS}

_ANCHOR_DIR = Path(__file__).resolve().parent / "anchors"


class CurveError(LicSearchError):
    """An R-D curve file is missing, malformed, or lacks what a computation needs."""


RATE_BITSTREAM = "bitstream"  # bytes the range coder wrote (lic-search eval, published anchors)
RATE_LIKELIHOOD = "likelihood"  # −log2 of the likelihoods: training-time eval/bpp, an estimate
RATE_SOURCES = (RATE_BITSTREAM, RATE_LIKELIHOOD)


@dataclass(frozen=True)
class ImageSet:
    """The images a curve was measured on: count and ``WxH`` sizes decide comparability, the folder is shown."""

    count: int
    sizes: dict[str, int]  # "768x512" -> number of images of that size
    folder: str = ""

    def same_images_as(self, other: "ImageSet") -> bool:
        return self.count == other.count and self.sizes == other.sizes

    def describe(self) -> str:
        sizes = ", ".join(f"{n} x {size}" for size, n in sorted(self.sizes.items(), key=lambda kv: -kv[1]))
        where = f" in {self.folder}" if self.folder else ""
        return f"{self.count} images ({sizes}){where}"

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "count": self.count, "sizes": dict(self.sizes)}


# The Kodak set: 24 images, 18 landscape 768x512 and 6 portrait 512x768.
KODAK = ImageSet(count=24, sizes={"768x512": 18, "512x768": 6}, folder="Kodak (kodim01-24)")
SHIPPED_ANCHOR_SETS = {"kodak": KODAK}  # anchors/<dataset>/ -> the images its curves were measured on


@functools.lru_cache(maxsize=64)
def eval_image_set(folder: str, limit: Optional[int] = None) -> Optional[ImageSet]:
    """The images training evaluates on (the first ``limit`` of ``folder`` by name, as
    ``trainables.data.images.load_eval_images`` takes them), sizes read from the file headers;
    None when the folder is not readable here (a search run elsewhere)."""
    from PIL import Image

    from trainables.data.images import list_images

    try:
        files = list_images(Path(folder))[:limit] if limit is not None else list_images(Path(folder))
        sizes: dict[str, int] = {}
        for path in files:
            with Image.open(path) as image:
                key = f"{image.width}x{image.height}"
            sizes[key] = sizes.get(key, 0) + 1
    except (LicSearchError, OSError, ValueError):
        return None
    return ImageSet(count=len(files), sizes=sizes, folder=folder) if files else None


def shipped_anchor(dataset: str = "kodak", codec: str = "vtm") -> Path:
    """Path of an anchor curve shipped with lic-search (``search/anchors/<dataset>/<codec>.json``)."""
    path = _ANCHOR_DIR / dataset / f"{codec}.json"
    if not path.is_file():
        shipped = sorted(f"{p.parent.name}/{p.stem}" for p in _ANCHOR_DIR.glob("*/*.json"))
        raise CurveError(f"no shipped anchor {dataset}/{codec}; shipped anchors: {', '.join(shipped) or 'none'}")
    return path


@dataclass
class RDCurve:
    """One codec's rate points; ``psnr`` in dB (RGB), ``ms_ssim`` as raw values in (0, 1)."""

    name: str
    bpp: list[float]
    psnr: Optional[list[float]] = None
    ms_ssim: Optional[list[float]] = None
    description: str = ""
    extra: dict[str, list[Any]] = field(default_factory=dict)  # other result lists (e.g. encoding_time)
    source: str = "<memory>"  # file it came from, named in error messages
    image_set: Optional[ImageSet] = None  # None: the file does not say
    rate: Optional[str] = None  # RATE_BITSTREAM or RATE_LIKELIHOOD; None: the file does not say

    def __len__(self) -> int:
        return len(self.bpp)

    def values(self, metric: str) -> list[float]:
        """The quality values of ``metric`` ("psnr" or "ms-ssim"); an error names the keys tried."""
        if metric not in METRIC_KEYS:
            raise CurveError(f"metric must be one of {', '.join(METRIC_KEYS)}, got {metric!r}")
        found = self.psnr if metric == "psnr" else self.ms_ssim
        if found is None:
            keys = " or ".join(f'"{k}"' for k in METRIC_KEYS[metric])
            raise CurveError(f"{self.source}: results has no {keys} list (curve {self.name!r} has no {metric} values)")
        return found

    def to_dict(self) -> dict[str, Any]:
        results: dict[str, list[Any]] = {}
        if self.psnr is not None:
            results[PSNR_KEYS[0]] = list(self.psnr)
        if self.ms_ssim is not None:
            results[MS_SSIM_KEYS[0]] = list(self.ms_ssim)
        results[BPP_KEY] = list(self.bpp)
        results.update({k: list(v) for k, v in self.extra.items()})
        data: dict[str, Any] = {"name": self.name, "description": self.description, "results": results}
        provenance = {k: v for k, v in (("image_set", self.image_set and self.image_set.to_dict()),
                                        ("rate", self.rate)) if v is not None}
        if provenance:
            data["lic_search"] = provenance
        return data


def _number_list(values: Any, source: str, key: str, *, positive: bool = False) -> list[float]:
    if not isinstance(values, list) or not values:
        raise CurveError(f"{source}: results.{key} must be a non-empty list of numbers, got {type(values).__name__}")
    out: list[float] = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CurveError(f"{source}: results.{key}[{index}] must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise CurveError(f"{source}: results.{key}[{index}] must be > 0, got {value!r}")
        out.append(float(value))
    return out


def _metric_list(results: Mapping[str, Any], keys: Sequence[str], source: str, n: int) -> Optional[list[float]]:
    for key in keys:
        if key in results:
            values = _number_list(results[key], source, key)
            if len(values) != n:
                raise CurveError(f"{source}: results.{key} has {len(values)} values but results.bpp has {n}; "
                                 "each rate point needs one of each")
            return values
    return None


def _image_set(value: Any, source: str) -> Optional[ImageSet]:
    if value is None:
        return None
    key = "lic_search.image_set"
    if not isinstance(value, dict):
        raise CurveError(f"{source}: {key} must be an object with count and sizes, got {type(value).__name__}")
    count, sizes = value.get("count"), value.get("sizes")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CurveError(f"{source}: {key}.count must be a positive integer, got {count!r}")
    counts = list(sizes.values()) if isinstance(sizes, dict) else []
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts) or sum(counts) != count:
        raise CurveError(f"{source}: {key}.sizes must map \"WxH\" to image counts that add up to count ({count}), "
                         f"got {sizes!r}")
    return ImageSet(count=count, sizes={str(k): int(n) for k, n in sizes.items()}, folder=str(value.get("folder", "")))


def _provenance(data: dict, source: str) -> tuple[Optional[ImageSet], Optional[str]]:
    extra = data.get("lic_search")
    if extra is None:
        return None, None
    if not isinstance(extra, dict):
        raise CurveError(f"{source}: lic_search must be an object, got {type(extra).__name__}")
    rate = extra.get("rate")
    if rate is not None and rate not in RATE_SOURCES:
        raise CurveError(f"{source}: lic_search.rate must be one of {', '.join(RATE_SOURCES)}, got {rate!r}")
    return _image_set(extra.get("image_set"), source), rate


def curve_from_dict(data: Any, source: str = "<memory>") -> RDCurve:
    """Validate a CompressAI results dict; ``source`` names the file in error messages."""
    if not isinstance(data, dict):
        raise CurveError(f"{source}: expected a JSON object with a 'results' object, got {type(data).__name__}")
    results = data.get("results")
    if not isinstance(results, dict):
        raise CurveError(f"{source}: missing 'results' object (CompressAI results format: "
                         '{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...]}})')
    if BPP_KEY not in results:
        raise CurveError(f"{source}: results has no \"bpp\" list; keys there: {', '.join(results) or 'none'}")
    bpp = _number_list(results[BPP_KEY], source, BPP_KEY, positive=True)
    psnr = _metric_list(results, PSNR_KEYS, source, len(bpp))
    ms_ssim = _metric_list(results, MS_SSIM_KEYS, source, len(bpp))
    if ms_ssim is not None:
        key = next(k for k in MS_SSIM_KEYS if k in results)
        for index, value in enumerate(ms_ssim):
            if not 0.0 < value < 1.0:
                raise CurveError(f"{source}: results.{key}[{index}] must be a raw MS-SSIM in (0, 1), got {value!r} "
                                 "(values already in dB are not accepted)")
    known = {BPP_KEY, *PSNR_KEYS, *MS_SSIM_KEYS}
    extra = {k: v for k, v in results.items() if k not in known and isinstance(v, list)}
    name = data.get("name")
    image_set, rate = _provenance(data, source)
    return RDCurve(
        name=str(name) if name else Path(source).stem,
        bpp=bpp,
        psnr=psnr,
        ms_ssim=ms_ssim,
        description=str(data.get("description", "")),
        extra=extra,
        source=source,
        image_set=image_set,
        rate=rate,
    )


def evaluation_curve(results: Sequence[Any], name: str, description: str = "") -> RDCurve:
    """One point per evaluated checkpoint (``trainables.evaluation.EvalResult``: means over its images), by rate."""
    ordered = sorted(results, key=lambda r: r.mean("bpp") or 0.0)
    ms_ssim = [r.mean("ms_ssim") for r in ordered]
    sets = {json.dumps(r.image_set(), sort_keys=True) for r in ordered}
    image_set = _image_set(json.loads(sets.pop()), "lic-search eval") if len(sets) == 1 else None
    return RDCurve(
        name=name,
        description=description or "lic-search eval (CompressAI range coder)",
        bpp=[r.mean("bpp") for r in ordered],
        psnr=[r.mean("psnr") for r in ordered],
        ms_ssim=ms_ssim if all(v is not None for v in ms_ssim) else None,
        extra={
            "encoding_time": [r.mean("encoding_time") for r in ordered],
            "decoding_time": [r.mean("decoding_time") for r in ordered],
            "likelihood_bpp": [r.mean("likelihood_bpp") for r in ordered],
            "lmbda": [r.lmbda for r in ordered],
        },
        image_set=image_set,
        rate=RATE_BITSTREAM,
    )


def load_curve(path: Path | str) -> RDCurve:
    """Read a CompressAI results JSON file."""
    path = Path(path)
    if not path.is_file():
        raise CurveError(f"{path}: no such R-D curve file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CurveError(f"{path}: not valid JSON ({error})") from None
    curve = curve_from_dict(data, str(path))
    if curve.image_set is None and path.resolve().parent.parent == _ANCHOR_DIR:
        curve = replace(curve, image_set=SHIPPED_ANCHOR_SETS.get(path.resolve().parent.name))
        if curve.rate is None:
            curve = replace(curve, rate=RATE_BITSTREAM)
    return curve


def check_comparable(test: RDCurve, anchor: RDCurve, allow_other_set: bool = False) -> Optional[str]:
    """May a BD-rate compare ``test`` with ``anchor``? None: yes, nothing to say; a string: yes, with this note.

    Raises :class:`CurveError` when both curves say which images they were measured on and the
    sets differ (unless ``allow_other_set``: then the mismatch is the returned warning). A curve
    that does not say is compared with a note; so is a likelihood rate (training's ``eval/bpp``).
    """
    notes = []
    anchor_images = anchor.image_set.describe() if anchor.image_set is not None else None
    if test.rate == RATE_LIKELIHOOD:
        notes.append(f"{test.name}: bpp is training-time eval/bpp, a likelihood estimate on the trial's eval images, "
                     "not bitstream bytes" + (f" on the anchor's {anchor_images}" if anchor_images else "")
                     + " (lic-search eval measures those)")
    if anchor.image_set is not None and test.image_set is None and test.rate != RATE_LIKELIHOOD:
        notes.append(f"{test.name} does not record its images; {anchor.name} was measured on {anchor_images}: "
                     "compare only curves measured on those images")
    if anchor.image_set is not None and test.image_set is not None \
            and not test.image_set.same_images_as(anchor.image_set):
        message = (f"{test.source}: {test.name} was measured on {test.image_set.describe()}, but the anchor "
                   f"{anchor.name} ({anchor.source}) on {anchor_images}; a BD-rate across image sets compares "
                   "the images, not the codecs")
        if not allow_other_set:
            raise CurveError(f"{message}. Evaluate on the anchor's images (lic-search eval CHECKPOINT --data DIR) "
                             "or pass --allow-other-set to compute it anyway")
        notes.append(f"warning: {message}")
    return "; ".join(notes) or None


def save_curve(curve: RDCurve, path: Path | str) -> Path:
    """Write ``curve`` as CompressAI results JSON (creates the parent folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(curve.to_dict(), indent=2) + "\n")
    return path


__all__ = ["RDCurve", "CurveError", "ImageSet", "eval_image_set",
           "KODAK", "RATE_BITSTREAM", "RATE_LIKELIHOOD", "check_comparable",
           "curve_from_dict", "evaluation_curve", "load_curve", "save_curve", "shipped_anchor",
           "METRIC_KEYS", "PSNR_KEYS", "MS_SSIM_KEYS", "BPP_KEY"]
