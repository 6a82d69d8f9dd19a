"""Per-image progress of an evaluation (``eval``, the LOF sweep): k of n images, with the running
mean bpp and PSNR of the curve point being evaluated (one checkpoint under one LOF setting)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional


def image_count(data: Path, max_images: Optional[int]) -> int:
    """The images an evaluation of ``data`` codes (errors about the folder are the evaluation's)."""
    from trainables.data.images import list_images

    try:
        count = len(list_images(Path(data)))
    except Exception:  # noqa: BLE001 - the evaluation itself reports a bad folder, naming it
        return 0
    return count if max_images is None else min(count, max_images)


class ImageProgress:
    """The ``on_image`` callback of :mod:`trainables.evaluation` and :mod:`trainables.lof` for a meter
    (``search.monitor.meter.Meter``, or any object with its ``on``/``update``)."""

    def __init__(self, meter: Any):
        self.meter = meter
        self.where = ""
        self._done: dict[tuple[str, str], list[Any]] = {}

    def at(self, where: str) -> None:
        """The checkpoint (or rate point and trial) whose images come next."""
        self.where = where

    def __call__(self, *args: Any) -> None:
        """``(image)`` from a plain evaluation, ``(lof_setting, image)`` from an LOF one."""
        *setting, image = args
        label = setting[0].label if setting else ""
        images = self._done.setdefault((self.where, label), [])
        images.append(image)
        psnr = [i.psnr for i in images if math.isfinite(i.psnr)]
        self.meter.on(" · ".join(part for part in (self.where, label) if part))
        self.meter.update(mean_bpp=sum(i.bpp for i in images) / len(images),
                          mean_PSNR=sum(psnr) / len(psnr) if psnr else math.inf)


__all__ = ["ImageProgress", "image_count"]
