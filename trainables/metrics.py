"""Metric names, defined once and imported everywhere (Ray Tune, MLflow, ASHA, reports)."""

import json
import math
from typing import Optional

ITERATIONS = "iterations"  # Ray Tune time attribute for ASHA

EVAL_RD_LOSS = "eval/rd_loss"  # λ·D + bpp on the held-out images (the ASHA metric)
EVAL_BPP = "eval/bpp"  # bits per pixel from the likelihoods
EVAL_PSNR = "eval/psnr"  # dB, RGB, on the unpadded area
EVAL_MS_SSIM = "eval/ms_ssim"
EVAL_MSE = "eval/mse"
EVAL_ORTHO_LOSS = "eval/ortho_loss"  # orthogonality penalty of all OLPs (unweighted)
EVAL_TOP10_ENERGY = "eval/energy_top10"  # share of latent energy in the top 10% channels
EVAL_AUXT_ENERGY = "eval/auxt_energy_share"  # share of latent energy from the AuxT branch
# Sequential entropy-decoding steps of ŷ per image (mean over the eval images), as the backbone declares
# them: a decode-time proxy that needs no timing (msp-style: its `steps`; a serial context model: one per
# latent position). Reported only by backbones that declare it (all registered ones do).
EVAL_DECODE_STEPS = "eval/decode_steps"

# Each evaluation's per-image values (a JSON table, :class:`PerImage`): image names and their bpp, PSNR, MSE,
# MS-SSIM and R-D loss, so comparisons can state intervals over images. Recorded as the run's artifact
# ``per_image/step_<iterations>.json`` (search.tracking.trial_logger), never as a metric.
EVAL_IMAGES = "eval_images"
PER_IMAGE_FOLDER = "per_image"
PER_IMAGE_COLUMNS = ("bpp", "psnr", "mse", "ms_ssim", "rd_loss")

TRAIN_LOSS = "train/loss"
TRAIN_RD_LOSS = "train/rd_loss"
TRAIN_BPP = "train/bpp"
TRAIN_DISTORTION = "train/distortion"
TRAIN_ORTHO_LOSS = "train/ortho_loss"
TRAIN_AUX_LOSS = "train/aux_loss"
TRAIN_LR = "train/lr"
TRAIN_ITERS_PER_S = "train/iters_per_s"
TRAIN_CROP_SIZE = "train/crop_size"  # training crop (pixels) of the last batch; reported only with data.crop_schedule

DATA_TRAIN_IMAGES = "data/train_images"  # training files listed (the index); unreadable ones included
DATA_SKIPPED_IMAGES = "data/skipped_images"  # of those, found unreadable and skipped by this trial so far
# "path<TAB>reason" lines of those files (at most SKIPPED_FILES_LISTED), in the first result after the list grew
SKIPPED_FILES = "skipped_files"
SKIPPED_FILES_LISTED = 1000

# The last result of a trial whose loss went non-finite: DIVERGED = 1, the reason, NaN scores.
# The trial ends there (errored in MLflow); Ray neither retries nor resumes it (resume is exact).
DIVERGED = "diverged"
DIVERGED_REASON = "diverged_reason"

# A trial started from ``model.init_from`` (first attempt only; a resumed one loads its own checkpoint):
INIT_LOADED_TENSORS = "init/loaded_tensors"  # state-dict entries loaded from the file
INIT_KEPT_TENSORS = "init/kept_tensors"  # entries left at their initialisation (AuxT, init_from_partial)
INIT_KEPT_KEYS = "init_kept_keys"  # their names, comma-separated (a string; recorded as an MLflow tag)

NODE_ID = "node_id"  # Ray node that ran the result (a string; recorded as an MLflow tag)

# A result that is not an evaluation carries NOTICE (its kind: 'checkpoint' on the clock, 'preempted'
# after SIGTERM, 'restored' after skipping damaged checkpoints or loading an unverifiable one), the iteration, and NaN scores (Ray
# requires the scheduler's metric in every result). Schedulers, searchers, MLflow histories and the
# scores the console shows skip it: use is_notice.
NOTICE = "notice"
NOTICE_CHECKPOINT, NOTICE_PREEMPTED, NOTICE_RESTORED = "checkpoint", "preempted", "restored"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"  # with notice 'restored': "path: problem" lines of those skipped
# with notice 'restored': the checkpoint loaded had no checksums.json (older than checksums), so it was not verified
UNVERIFIED_CHECKPOINT = "unverified_checkpoint"
RESTORED_AT = "restored_at"  # in every result of an attempt that started from a checkpoint: its iteration


class PerImage:
    """Columns of per-image values, in evaluation order (``ms_ssim`` None where an image is too small)."""

    def __init__(self, names: Optional[list[str]] = None, **columns: list):
        self.names: list[str] = list(names or [])
        self.columns: dict[str, list] = {c: list(columns.get(c) or [None] * len(self.names))
                                         for c in PER_IMAGE_COLUMNS}

    def add(self, name: str, **values: Optional[float]) -> None:
        self.names.append(name)
        for column in PER_IMAGE_COLUMNS:
            value = values.get(column)
            self.columns[column].append(None if value is None or not math.isfinite(value) else float(value))

    def to_json(self) -> str:
        return json.dumps({"images": self.names, **self.columns}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PerImage":
        data = json.loads(text)
        return cls(data.get("images") or [], **{c: data.get(c) for c in PER_IMAGE_COLUMNS})

    def values(self, column: str) -> dict[str, Optional[float]]:
        """Image name -> value of ``column``."""
        return dict(zip(self.names, self.columns[column]))


def per_image_artifact(step: int) -> str:
    """The MLflow artifact path of one evaluation's per-image table."""
    return f"{PER_IMAGE_FOLDER}/step_{int(step):08d}.json"


def is_notice(result: dict) -> bool:
    """Whether a result is a notice (a checkpoint or a restore between evaluations), not an evaluation."""
    return bool(result.get(NOTICE))

DEFAULT_METRIC = EVAL_RD_LOSS
DEFAULT_MODE = "min"
