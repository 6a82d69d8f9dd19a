"""Checkpoint files: written atomically, verified when read, read with ``weights_only=True``.

A checkpoint is a folder holding ``state.pt`` (model, both optimizers, LR scheduler, RNG
states, iteration and the resolved trial config), ``trial_config.yaml`` and ``checksums.json``
(each file's size and SHA-256, computed when written), so a file truncated or altered later (a
crash mid-copy on a network filesystem) is detected, not guessed from a failing unpickle. Ray
Tune copies the folder into the trial's storage; :func:`load_trained_model` rebuilds the model
from it for ``lic-search eval``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from trainables.atomic_file import write_atomically
from trainables.config import TrialConfig
from trainables.errors import LicSearchError

STATE_FILE = "state.pt"
CONFIG_FILE = "trial_config.yaml"
MANIFEST_FILE = "checksums.json"  # {file: {"bytes": n, "sha256": hex}} of the files above


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


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as :data:`MANIFEST_FILE` records them."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    """Save ``state`` (must contain ``config``) into ``folder`` atomically, with the checksums of
    what was written; returns the state file."""
    folder = Path(folder)
    target = folder / STATE_FILE
    write_atomically(target, lambda stream: torch.save(state, stream))
    config_text = yaml.safe_dump(state["config"], sort_keys=False).encode()
    write_atomically(folder / CONFIG_FILE, lambda stream: stream.write(config_text))
    manifest = {name: file_digest(folder / name) for name in (STATE_FILE, CONFIG_FILE)}
    text = json.dumps(manifest, indent=1).encode()
    write_atomically(folder / MANIFEST_FILE, lambda stream: stream.write(text))
    return target


def damage(folder: Path) -> Optional[str]:
    """What is wrong with a checkpoint folder's files against its :data:`MANIFEST_FILE`, or None.

    A folder without a manifest (written before checksums were recorded) is not judged here:
    loading it decides."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        return f"{STATE_FILE} is missing"
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"{MANIFEST_FILE} is unreadable ({error})"
    for name, recorded in manifest.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != recorded.get("bytes"):
            return f"{name} has {size} bytes, {recorded.get('bytes')} were written"
        if file_digest(file)["sha256"] != recorded.get("sha256"):
            return f"{name} differs from what was written (SHA-256 mismatch)"
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder or ``state.pt`` file (``weights_only=True``: no code runs).

    A folder is verified against its checksums first; damage is a :class:`LicSearchError` naming it."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise LicSearchError(f"no checkpoint at {path} (expected a folder with {STATE_FILE} or the file itself)")
    problem = damage(file.parent)
    if problem is not None:
        raise LicSearchError(f"damaged checkpoint {file.parent}: {problem}")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:  # corrupt or foreign file: say which
        raise LicSearchError(f"cannot read checkpoint {file}: {error}") from None


def checkpoint_index(path: str) -> int:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if name.startswith("checkpoint_") and digits.isdigit() else -1


def restore_candidates(checkpoint, trial_id: Optional[str]) -> list:
    """The checkpoints to try, best first: Ray's (the newest it registered) and, when it lies in
    this trial's own folder, the trial's older checkpoints there, newest first (a fallback for damage).

    Newer ones (written while the driver went away) are not used: the results they were reported with
    never reached the driver, so the trial's history would miss those evaluations."""
    from pyarrow import fs as pafs
    from ray import tune

    path = checkpoint.path.rstrip("/")
    parent = path.rsplit("/", 1)[0]
    if not trial_id or f"_{trial_id}_" not in parent.rsplit("/", 1)[-1] or checkpoint_index(path) < 0:
        return [checkpoint]  # another trial's (a PBT clone) or an unknown layout: only Ray's choice
    try:
        infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return [checkpoint]
    siblings = sorted((i.path for i in infos if i.type == pafs.FileType.Directory and checkpoint_index(i.path) >= 0
                       and i.path.rstrip("/") != path), key=checkpoint_index, reverse=True)
    older = [p for p in siblings if checkpoint_index(p) < checkpoint_index(path)]
    return [checkpoint] + [tune.Checkpoint(p, checkpoint.filesystem) for p in older]


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
