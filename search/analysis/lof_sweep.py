"""LOF sweep over a finished search: every LOF setting on the best trial of every rate point.

Latent overfitting is an encode-time option, so it needs no retraining: the rank-1 trial of
each rate point (the ranking ``lic-search best`` prints, :func:`search.tracking.queries.best_trials`)
is loaded from its latest Ray checkpoint and coded once per setting. The results go to
MLflow on that trial's own run (``lof/<setting>/bpp``, ...: next to what it trained to), and
one R-D curve per setting across the rate points is returned for CompressAI-format JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from search.analysis.bdrate import bd_rate
from search.analysis.curves import CurveError, RDCurve
from search.errors import LicSearchError
from search.experiment.state import SearchState
from search.experiment.store import ExperimentStore
from search.space.strata import stratum_label
from search.tracking import client as tracking
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking import session as tracking_session
from search.tracking.queries import SearchSelection, best_trials, winners
from trainables import metrics as M
from trainables.losses import rd_loss_value

CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")  # Ray Tune's checkpoint folders in a trial folder

# The quantities logged per setting, ``lof/<setting>/<name>`` (EvalResult means over the eval set).
LOF_BPP, LOF_PSNR, LOF_MS_SSIM, LOF_RD_LOSS = "bpp", "psnr", "ms_ssim", "rd_loss"
LOF_ENCODE_S, LOF_DECODE_S = "encode_s", "decode_s"


def lof_metric(label: str, name: str) -> str:
    """``lof/lof50-lr0.005/bpp``: MLflow-safe (labels are letters, digits, '-', '.')."""
    return f"{T.METRIC_LOF_PREFIX}{label}/{name}"


def parse_lof_metric(key: str) -> Optional[tuple[str, str]]:
    """``(setting, name)`` of a ``lof/<setting>/<name>`` key, None for any other metric."""
    if not key.startswith(T.METRIC_LOF_PREFIX):
        return None
    label, _, name = key[len(T.METRIC_LOF_PREFIX):].rpartition("/")
    return (label, name) if label and name else None


@dataclass
class SweptTrial:
    """One rate point's winner and its evaluation under every setting (same order as the settings)."""

    run_id: str
    trial_id: str
    stratum: dict[str, Any]
    checkpoint: Path
    distortion: str  # loss.distortion it trained with: the D of its R-D loss
    results: list[Any] = field(default_factory=list)  # trainables.evaluation.EvalResult per setting


def latest_checkpoint(experiment_dir: str, trial_id: str) -> Path:
    """The highest-numbered ``checkpoint_NNNNNN`` of the trial whose Ray folder names ``trial_id``: a local
    folder, or (an experiment folder in object storage) its copy downloaded into the temporary folder."""
    store = ExperimentStore(experiment_dir)
    # Ray names trial folders <trainable>_<trial_id>_<index>_<params>_<date>; the id is a token of its own.
    trials = [d for d in store.list(folders=True) if f"_{trial_id}_" in f"_{d}_"]
    checkpoints = [(int(m.group(1)), f"{d}/{c}") for d in trials for c in store.list(d, folders=True)
                   if (m := CHECKPOINT_DIR.match(c))]
    if not checkpoints:
        raise LicSearchError(f"trial {trial_id}: no checkpoint_NNNNNN folder in a trial folder of {experiment_dir} "
                             f"(MLflow tag {T.TAG_SEARCH_DIR} of the search's parent run; trial folders found: "
                             f"{', '.join(trials) or 'none'})")
    newest = max(checkpoints)[1]
    return store.download(newest, Path(tempfile.gettempdir()) / "lic-search-checkpoints" / store.name / newest)


def rd_loss(result: Any, distortion: str) -> Optional[float]:
    """λ·D + bpp of the real bitstream (D as the loss registry defines it: trainables.losses.rd_loss_value),
    mean over images; None when the checkpoint names no λ or an image lacks the quality D needs."""
    if result.lmbda is None:
        return None
    losses = []
    for image in result.images:
        mse = 10 ** (-image.psnr / 10) if math.isfinite(image.psnr) else 0.0  # PSNR on [0, 1] back to MSE
        loss = rd_loss_value(distortion, result.lmbda, image.bpp, mse=mse, ms_ssim=image.ms_ssim)
        if math.isnan(loss):
            return None
        losses.append(loss)
    return sum(losses) / len(losses) if losses else None


def setting_metrics(label: str, result: Any, distortion: str) -> dict[str, float]:
    """The ``lof/<setting>/*`` metrics of one evaluation (missing values are left out)."""
    values = {LOF_BPP: result.mean("bpp"), LOF_PSNR: result.mean("psnr"), LOF_MS_SSIM: result.mean("ms_ssim"),
              LOF_RD_LOSS: rd_loss(result, distortion), LOF_ENCODE_S: result.mean("encoding_time"),
              LOF_DECODE_S: result.mean("decoding_time")}
    return {lof_metric(label, k): float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def per_image_artifact(label: str) -> str:
    """The trial run's artifact of one setting's per-image results (``trainables.metrics.PerImage``)."""
    return f"{M.PER_IMAGE_FOLDER}/eval_{label}.json"


def _log(folder: str, trial_id: str, metrics: dict[str, float], tags: dict[str, str],
         tables: Optional[dict[str, str]] = None) -> int:
    """``lof/*`` metrics and tags, and each setting's per-image table (artifact path -> JSON), onto the trial's
    run, through the search's tracking journal (an outage delays them to ``lic-search sync``). Returns the
    records still pending."""
    store = ExperimentStore(folder)
    state = SearchState.load(store)
    now = int(time.time() * 1000)
    for artifact, text in (tables or {}).items():
        tracking_session.record(store, state, J.BATCH, trial_id, text=text, artifact=artifact)
    return tracking_session.record(store, state, J.BATCH, trial_id,
                                   metrics=[[k, v, now, 0] for k, v in metrics.items()],
                                   tags={k: v[:5000] for k, v in tags.items()})


def sweep_search(selection: SearchSelection, data: Path, settings: Sequence[Any], device: str = "auto",
                 max_images: Optional[int] = None, log: bool = True, progress: Any = None) -> list[SweptTrial]:
    """Evaluate every setting on the rank-1 trial of every rate point; log ``lof/*`` on their runs.

    ``progress`` (a ``search.monitor.meter.Meter``) counts the images, naming the rate point, trial and setting."""
    from search.analysis.eval_progress import ImageProgress, image_count
    from trainables.lof import evaluate_checkpoint_lof

    client = tracking.client_for(selection.tracking_uri)
    best = winners(best_trials(selection.experiment, selection=selection))
    if not best:
        raise LicSearchError(f"search {selection.experiment!r} at {selection.tracking_uri} has no ranked trial "
                             f"(no finished evaluation) to sweep LOF settings over")
    folders: dict[str, str] = {}
    swept = []
    images = ImageProgress(progress) if progress is not None else None
    if progress is not None:
        progress.start(len(best) * len(settings) * image_count(data, max_images))
    for row in best:
        parent = row["parent_run_id"]
        if parent not in folders:
            folders[parent] = client.get_run(parent).data.tags.get(T.TAG_SEARCH_DIR, "")
        checkpoint = latest_checkpoint(folders[parent], row["trial_id"])
        with progress.paused() if progress is not None else contextlib.nullcontext():
            print(f"{stratum_label(row['stratum'])}: trial {row['trial_id']} (run {row['run_id']}), {checkpoint}")
        if images is not None:
            images.at(f"{stratum_label(row['stratum'])} · trial {row['trial_id']}")
        results = evaluate_checkpoint_lof(checkpoint, data, settings, device=device, max_images=max_images,
                                          on_image=images)
        distortion = str(row["params"].get("loss.distortion", "mse"))
        trial = SweptTrial(row["run_id"], row["trial_id"], row["stratum"], checkpoint, distortion, results)
        swept.append(trial)
        if log:
            metrics = {k: v for s, r in zip(settings, results)
                       for k, v in setting_metrics(s.label, r, distortion).items()}
            tables = {per_image_artifact(s.label): r.per_image(distortion).to_json() for s, r in zip(settings, results)}
            pending = _log(folders[parent], trial.trial_id, metrics, tables=tables, tags={
                T.TAG_LOF_DATA: str(Path(data).resolve()) + ("" if max_images is None else f" (first {max_images})"),
                T.TAG_LOF_CHECKPOINT: str(checkpoint),
                T.TAG_LOF_SETTINGS: json.dumps({s.label: {"iterations": s.iterations, "lr": s.lr,
                                                          "latents": s.latents, "proxy": s.proxy} for s in settings}),
            })
            if pending:
                with progress.paused() if progress is not None else contextlib.nullcontext():
                    print(f"note: lof/* metrics of trial {trial.trial_id} wait in the tracking journal ({pending} "
                          f"records); ship them with: lic-search sync {folders[parent]}")
            if progress is not None:
                progress.written = (f"lof/* metrics of {len(swept)} trial(s), on their MLflow runs (or in the "
                                    "tracking journal, for lic-search sync)")
    return swept


def setting_results(swept: Sequence[SweptTrial], index: int) -> list[Any]:
    """The evaluations of setting ``index`` across the rate points (one curve's points)."""
    return [trial.results[index] for trial in swept]


# ------------------------------------------------------------------------------ report summary
BASELINE = "lof0"  # LOFConfig(iterations=0).label: plain encoding, what every setting is compared with
MIN_BD_POINTS = 4  # as the report's family BD-rates


def lof_summary(trials: Sequence[dict[str, float]], method: str = "pchip") -> list[dict[str, Any]]:
    """Per LOF setting, its gain over plain encoding on the trials that have both (their ``lof/*`` metrics).

    With >= 4 rate points the BD-rate (PSNR) of the setting's curve against the ``lof0`` curve;
    with fewer the mean bpp change (%) and PSNR change (dB) per trial; always the mean
    encode-time ratio (LOF's cost)."""

    def value(metrics: dict[str, float], label: str, name: str) -> Optional[float]:
        return metrics.get(lof_metric(label, name))

    labels = dict.fromkeys(parsed[0] for m in trials for k in m if (parsed := parse_lof_metric(k)))
    rows = []
    for label in (lab for lab in labels if lab != BASELINE):
        pairs = [m for m in trials if all(value(m, lab, n) for lab in (label, BASELINE)
                                          for n in (LOF_BPP, LOF_PSNR, LOF_ENCODE_S))]
        if not pairs:
            continue
        row: dict[str, Any] = {"setting": label, "trials": len(pairs), "bd_rate": None, "note": None,
                               "rate_change": 100 * sum(value(m, label, LOF_BPP) / value(m, BASELINE, LOF_BPP) - 1
                                                        for m in pairs) / len(pairs),
                               "psnr_change": sum(value(m, label, LOF_PSNR) - value(m, BASELINE, LOF_PSNR)
                                                  for m in pairs) / len(pairs),
                               "encode_ratio": sum(value(m, label, LOF_ENCODE_S) / value(m, BASELINE, LOF_ENCODE_S)
                                                   for m in pairs) / len(pairs)}
        if len(pairs) >= MIN_BD_POINTS:
            curves = [RDCurve(name=lab, bpp=[value(m, lab, LOF_BPP) for m in pairs],
                              psnr=[value(m, lab, LOF_PSNR) for m in pairs]) for lab in (label, BASELINE)]
            try:
                row["bd_rate"] = bd_rate(curves[0], curves[1], "psnr", method).bd_rate
            except CurveError as error:
                row["note"] = str(error)
        rows.append(row)
    return rows


__all__ = ["SweptTrial", "lof_summary", "sweep_search", "latest_checkpoint", "lof_metric", "parse_lof_metric",
           "rd_loss",
           "setting_metrics", "setting_results", "LOF_BPP", "LOF_PSNR", "LOF_MS_SSIM", "LOF_RD_LOSS",
           "LOF_ENCODE_S", "LOF_DECODE_S"]
