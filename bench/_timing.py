"""Timing helpers shared by the benchmarks: device-synchronised clocks and interleaved repeats.

On a GPU, kernels run asynchronously: a wall clock read without a sync measures the launch,
not the work. :func:`elapsed` therefore times a call with CUDA events recorded on the
current stream (synchronised before reading), and with ``time.perf_counter`` on a CPU.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: make the checkout importable
    sys.path.insert(0, str(REPO))

from search.analysis.step_timing import device_label  # noqa: E402  (one label for bench and `lic-search estimate`)

__all__ = ["REPO", "sync", "elapsed", "interleaved", "device_label", "device_slug", "command_line"]


def sync(device: torch.device) -> None:
    """Wait for every queued kernel on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(call: Callable[[], object], device: torch.device) -> float:
    """Seconds ``call()`` takes on ``device``: CUDA events on a GPU, the wall clock on a CPU."""
    if device.type == "cuda":
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def interleaved(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Time every call ``repeats`` times after ``warmup`` untimed rounds, alternating who goes
    first each round so that drift in machine load hits all of them alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            times[name].append(elapsed(calls[name], device))
    return times


def device_slug(device: torch.device) -> str:
    """A file-name-safe device name: ``nvidia-h100-80gb-hbm3``, ``cpu``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def command_line(script: str, argv: Optional[Sequence[str]]) -> str:
    """The command that produced a result, for the report (``python bench/x.py --flag``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script, *args])
