"""The one place a device name ("auto", "cpu", "cuda") becomes a ``torch.device``.

Training (``performance.device``) and ``lic-search eval --device`` both go through it, so
"auto" means the same thing everywhere and asking for a missing GPU fails the same way.
"""

from __future__ import annotations

import torch

from trainables.errors import LicSearchError

DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; ``cuda`` without one is an error, not a slow fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICE_NAMES:
        raise LicSearchError(f"device must be one of {', '.join(DEVICE_NAMES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise LicSearchError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


__all__ = ["resolve_device", "DEVICE_NAMES"]
