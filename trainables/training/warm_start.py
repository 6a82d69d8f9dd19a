"""Warm starts (``model.init_from``): a trial's model starts from saved weights, not from random ones.

Weights only: optimizers, learning-rate schedule, RNG and the iteration counter start fresh,
so a warm-started trial trains its whole ``schedule.iterations`` from the loaded weights. The
file is read with ``torch.load(weights_only=True)`` (no code runs) and may be

* a checkpoint of this tool: a trial's checkpoint folder or its ``state.pt`` (keys
  ``backbone.*``; the config saved beside the weights names the backbone and widths), or
* a CompressAI state dict: the bare dict of CompressAI's zoo files, or the ``state_dict``
  entry of what CompressAI's ``examples/train.py`` saves (keys ``g_a.*``, old zoo names
  renamed by CompressAI's own ``load_pretrained``).

A checkpoint folder of this tool is verified against the checksums recorded when it was written
(:data:`~trainables.training.checkpoint.MANIFEST_FILE`): a file changed since is refused, naming
it and what differs. A ladder's fine-tunes start from the start point's newest checkpoint that verifies
(:func:`newest_verified`); should it fail by the time a fine-tune loads it, the start point's newest older
``checkpoint_k`` that verifies is loaded instead. ``init_from`` may be a URI (``s3://...``, a ladder's
start point on object storage): it is copied through pyarrow first (:mod:`trainables.training.checkpoint_source`).

Keys must match the trial's model exactly. The one exception, when asked
(``init_from_partial``), is AuxT added to a model trained without it: AuxT wraps ``g_a``/``g_s``
(their layers move under ``layers.``, see :mod:`trainables.auxt.attach`), so such a
checkpoint is mapped onto the wrapped layers, and the AuxT branch's own parameters keep their
initialisation. Everything is checked by :func:`plan` without touching the model, so the
search can refuse a bad ``init_from`` before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from trainables.training.checkpoint import MANIFEST_FILE, STATE_FILE, damage, restore_candidates
from trainables.training.checkpoint_source import CheckpointSource
from trainables import metrics as M
from trainables.config import ModelConfig
from trainables.errors import LicSearchError

__all__ = ["WarmStartError", "WarmStart", "read_source", "read_weights", "plan", "apply_warm_start", "newest_verified",
           "warm_start_result"]

KEY_PATH = "model.init_from"
SHOWN = 5  # keys named per kind of mismatch


class WarmStartError(LicSearchError):
    """An ``init_from`` that cannot initialise the trial's model; the message names file and key path."""


@dataclass
class WarmStart:
    """What a warm start loads: the model's state dict entries, and the keys left at initialisation."""

    source: str
    weights: dict[str, torch.Tensor]
    kept: list[str] = field(default_factory=list)  # model keys not in the file (AuxT branch, partial only)

    @property
    def loaded(self) -> int:
        return len(self.weights)


def _checkpoint_file(path: Path) -> Path:
    return path / STATE_FILE if path.is_dir() else path


def _read_local(file: Path, shown: str) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """The weights in the local ``file`` (``shown``: how messages name it), verified against its checksums."""
    if not file.is_file():
        raise WarmStartError(f"{KEY_PATH}: no checkpoint at {shown} (expected a checkpoint folder with "
                             f"{STATE_FILE}, a {STATE_FILE} file, or a CompressAI state dict file)")
    problem = damage(file.parent) if (file.parent / MANIFEST_FILE).is_file() else None
    if problem is not None:  # a checkpoint of this tool records its checksums: a changed file is refused
        folder = shown.rsplit("/", 1)[0]  # the checkpoint folder its checksums belong to
        raise WarmStartError(f"{KEY_PATH}: {folder} fails its checksums ({MANIFEST_FILE}): {problem}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (corrupt, truncated or not a torch file: say which)
        raise WarmStartError(f"{KEY_PATH}: cannot read {shown}: {type(error).__name__}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), Mapping) and "config" in state:
        return dict(state["model"]), state["config"]  # a checkpoint of this tool
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, Mapping) or not weights or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise WarmStartError(f"{KEY_PATH}: {shown} holds no model weights (neither a lic-search checkpoint nor a "
                             "CompressAI state dict of tensors)")
    from compressai.zoo.pretrained import load_pretrained

    return {f"backbone.{k}": v for k, v in load_pretrained(dict(weights)).items()}, None


def _shown(source: CheckpointSource, local: Path) -> str:
    """How messages name the file read: its own path, or the URI of the remote file it was copied from."""
    if source.local:
        return str(local)
    return source.location if local.name == Path(source.path).name else f"{source.location.rstrip('/')}/{local.name}"


def read_source(location: str | Path) -> tuple[str, dict[str, torch.Tensor], Optional[dict]]:
    """(file loaded, weights under this tool's key names, saved trial config or None) of ``location``: a path or
    a URI (copied from remote storage first). A trial's ``checkpoint_N`` that fails its checksums or cannot be
    read is passed over for the trial's newest older one that loads (as a ladder's plan picks the start point's)."""
    failures: list[WarmStartError] = []
    for candidate in CheckpointSource(str(location)).with_older():
        try:
            with candidate.fetched() as local:
                file = _checkpoint_file(local)
                shown = _shown(candidate, file)
                weights, saved = _read_local(file, shown)
        except (WarmStartError, OSError) as error:
            failures.append(error if isinstance(error, WarmStartError) else
                            WarmStartError(f"{KEY_PATH}: cannot read {candidate}: {type(error).__name__}: {error}"))
            continue
        for failure in failures:
            print(f"lic-search: {failure}; loading {shown} instead")
        return shown, weights, saved
    if len(failures) == 1:
        raise failures[0]
    raise WarmStartError(f"{KEY_PATH}: no checkpoint of {location} or its older ones loads: "
                         + "; ".join(str(f).removeprefix(f"{KEY_PATH}: ") for f in failures))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """The model weights in ``path`` (a path or URI) under this tool's key names, and the saved trial config."""
    _, weights, saved = read_source(path)
    return weights, saved


def _same_architecture(file: str, saved: Optional[dict], config: ModelConfig) -> None:
    """A checkpoint of this tool names its backbone and widths: compare them before any key."""
    if saved is None:
        return
    model = ModelConfig.model_validate(saved.get("model", {}))
    from trainables.backbones import get_backbone

    mine = (config.backbone, *get_backbone(config.backbone).resolve(config.N, config.M))
    try:
        theirs = (model.backbone, *get_backbone(model.backbone).resolve(model.N, model.M))
    except LicSearchError:
        theirs = (model.backbone, model.N, model.M)
    if mine != theirs:
        raise WarmStartError(f"{KEY_PATH}: {file} was trained with backbone {theirs[0]!r} (N={theirs[1]}, "
                             f"M={theirs[2]}), but this trial's model.backbone is {mine[0]!r} (N={mine[1]}, "
                             f"M={mine[2]}); a warm start needs the same backbone and widths")


def _without_auxt_wrapper(key: str) -> str:
    return key.replace(".g_a.layers.", ".g_a.").replace(".g_s.layers.", ".g_s.")


def _is_auxt_branch(key: str) -> bool:
    return ".g_a.branch." in key or ".g_s.branch." in key


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" (and {len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def plan(model_state: Mapping[str, torch.Tensor], path: str | Path, config: ModelConfig,
         partial: bool = False) -> WarmStart:
    """Match the file's weights to the model's state dict keys; raise :class:`WarmStartError` on any mismatch."""
    file, weights, saved = read_source(path)
    _same_architecture(file, saved, config)
    matched: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key in model_state:
        if key in weights:
            matched[key] = weights[key]
        elif partial and _without_auxt_wrapper(key) in weights:
            matched[key] = weights[_without_auxt_wrapper(key)]
        else:
            missing.append(key)
    used = set(matched) | {_without_auxt_wrapper(k) for k in matched}
    unexpected = [k for k in weights if k not in used]
    kept = [k for k in missing if partial and _is_auxt_branch(k)]
    missing = [k for k in missing if k not in kept]
    if missing or unexpected:
        if not partial and _fits_partially(model_state, weights):
            branch = [k for k in model_state if _is_auxt_branch(k)]
            raise WarmStartError(f"{KEY_PATH}: {file} holds weights trained without AuxT, and this trial adds AuxT "
                                 f"({_names(branch)} are not in the file): set model.init_from_partial: true to "
                                 "start AuxT's parameters from their initialisation and load the rest")
        parts = ([f"missing from the file: {_names(missing)}"] if missing else []) + \
                ([f"not in the model: {_names(unexpected)}"] if unexpected else [])
        raise WarmStartError(f"{KEY_PATH}: {file} does not fit this trial's model ({config.backbone}"
                             f"{', AuxT on' if config.auxt.enabled else ''}): {'; '.join(parts)}")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}" for k, v in matched.items()
              if v.shape != model_state[k].shape and not _is_cdf_buffer(k)]
    if shapes:
        raise WarmStartError(f"{KEY_PATH}: {file} has other tensor shapes than this trial's model (another width "
                             f"or backbone?): {_names(shapes)}")
    return WarmStart(file, matched, kept)


def _fits_partially(model_state: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether the file is this model without AuxT (every other key found under its unwrapped name)."""
    others = [k for k in model_state if not _is_auxt_branch(k)]
    return len(others) < len(model_state) and {_without_auxt_wrapper(k) for k in others} == set(weights)


def _is_cdf_buffer(key: str) -> bool:
    """Entropy-coder tables, sized only by ``update()``: the model resizes them on load."""
    return key.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def apply_warm_start(model: torch.nn.Module, config: ModelConfig) -> Optional[WarmStart]:
    """Load ``config.init_from`` into ``model`` (weights only); None when the config has no ``init_from``."""
    if not config.init_from:
        return None
    start = plan(model.state_dict(), config.init_from, config, config.init_from_partial)
    model.load_state_dict(start.weights, strict=not start.kept)
    return start


def newest_verified(checkpoint, trial_id: Optional[str]) -> tuple[Optional[str], list[str]]:
    """The newest of a trial's checkpoints (``checkpoint`` first, then its older ones in the trial's folder,
    as a restore tries them) whose files match their recorded checksums, and "path: problem" of each newer
    one that did not. ``(None, problems)`` when none does."""
    damaged: list[str] = []
    for candidate in restore_candidates(checkpoint, trial_id):
        try:
            with candidate.as_directory() as folder:
                problem = damage(Path(folder))
        except Exception as error:  # noqa: BLE001  (unreadable storage is damage too: say what)
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            return str(candidate.path), damaged
        damaged.append(f"{candidate.path}: {problem}")
    return None, damaged


def warm_start_result(start: Optional[WarmStart]) -> dict[str, Any]:
    """What a trial reports about its warm start with each result (empty without one)."""
    if start is None:
        return {}
    return {M.INIT_LOADED_TENSORS: start.loaded, M.INIT_KEPT_TENSORS: len(start.kept),
            M.INIT_KEPT_KEYS: ",".join(start.kept)}
