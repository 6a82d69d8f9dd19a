"""Metric names, defined once and imported everywhere (Ray Tune, MLflow, ASHA, reports)."""

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


def is_notice(result: dict) -> bool:
    """Whether a result is a notice (a checkpoint or a restore between evaluations), not an evaluation."""
    return bool(result.get(NOTICE))

DEFAULT_METRIC = EVAL_RD_LOSS
DEFAULT_MODE = "min"
