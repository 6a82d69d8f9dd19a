"""R-D curves in CompressAI's results format, read and written in one place.

CompressAI (``compressai.utils.eval_model``) and its published anchors
(``results/image/kodak/*.json``) store a codec as
``{"name", "description", "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...], ...}}``
with one list entry per rate point. Older files say ``psnr`` / ``ms-ssim``; both are read,
the ``-rgb`` spelling is written, so lic-search output plots beside the published curves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
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
        return {"name": self.name, "description": self.description, "results": results}


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
    return RDCurve(
        name=str(name) if name else Path(source).stem,
        bpp=bpp,
        psnr=psnr,
        ms_ssim=ms_ssim,
        description=str(data.get("description", "")),
        extra=extra,
        source=source,
    )


def evaluation_curve(results: Sequence[Any], name: str, description: str = "") -> RDCurve:
    """One point per evaluated checkpoint (``trainables.evaluation.EvalResult``: means over its images), by rate."""
    ordered = sorted(results, key=lambda r: r.mean("bpp") or 0.0)
    ms_ssim = [r.mean("ms_ssim") for r in ordered]
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
    return curve_from_dict(data, str(path))


def save_curve(curve: RDCurve, path: Path | str) -> Path:
    """Write ``curve`` as CompressAI results JSON (creates the parent folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(curve.to_dict(), indent=2) + "\n")
    return path


__all__ = ["RDCurve", "CurveError", "curve_from_dict", "evaluation_curve", "load_curve", "save_curve", "shipped_anchor",
           "METRIC_KEYS", "PSNR_KEYS", "MS_SSIM_KEYS", "BPP_KEY"]
