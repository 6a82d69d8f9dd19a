"""Checkpoint files: written atomically, read with ``weights_only=True``.

A checkpoint is a folder holding ``state.pt`` (model, both optimizers, LR scheduler, RNG
states, iteration and the resolved trial config) and ``trial_config.yaml``. Ray Tune copies
the folder into the trial's storage; :func:`load_trained_model` rebuilds the model from it
for ``lic-search eval``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from trainables.config import TrialConfig
from trainables.errors import LicSearchError

STATE_FILE = "state.pt"
CONFIG_FILE = "trial_config.yaml"


def capture_rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts (no numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
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


def save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    """Save ``state`` (must contain ``config``) into ``folder`` atomically; returns the state file."""
    folder = Path(folder)
    target = folder / STATE_FILE
    _atomic_write(target, lambda stream: torch.save(state, stream))
    config_text = yaml.safe_dump(state["config"], sort_keys=False).encode()
    _atomic_write(folder / CONFIG_FILE, lambda stream: stream.write(config_text))
    return target


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder or ``state.pt`` file (``weights_only=True``: no code runs)."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise LicSearchError(f"no checkpoint at {path} (expected a folder with {STATE_FILE} or the file itself)")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:  # corrupt or foreign file: say which
        raise LicSearchError(f"cannot read checkpoint {file}: {error}") from None


def load_trained_model(path: Path, map_location: str | torch.device = "cpu"):
    """Rebuild the trained model and its config from a checkpoint, ready for ``compress``."""
    from trainables.model import create_model

    state = load_checkpoint(path, map_location)
    config = TrialConfig.model_validate(state["config"])
    model = create_model(config.model)
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    model.update(force=True)
    return model, config
