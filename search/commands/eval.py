"""`lic-search eval CHECKPOINT --data DIR`: real compress/decompress of every image, CompressAI-format JSON."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

from search.commands._shared import add_quiet_option

RATE_NOTE = 0.02  # bitstream more than 2% above the likelihood estimate is worth a note


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compress/decompress every image with a trained checkpoint: bpp from the bitstream, PSNR, MS-SSIM",
        description="Evaluates trial checkpoints with CompressAI's range coder. Each CHECKPOINT (a checkpoint "
                    "folder or its state.pt) gives one R-D point; --json writes them as one curve in "
                    "CompressAI's results format (usable by lic-search bd-rate). Exits 1 if a decoded image "
                    "differs from the model's forward reconstruction.",
    )
    parser.add_argument("checkpoints", nargs="*", type=Path, metavar="CHECKPOINT")
    sweep = parser.add_argument_group("LOF sweep over a search (search/analysis/lof_sweep.py): instead of CHECKPOINTs, the "
                                      "best trial of every rate point (as `lic-search best` ranks), its latest "
                                      "checkpoint; logs lof/<setting>/* metrics on each trial's MLflow run")
    sweep.add_argument("--search", default=None, metavar="NAME", help="search name (the MLflow experiment)")
    sweep.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db)")
    sweep.add_argument("--run-id", default=None, metavar="PARENT",
                       help="the search whose MLflow parent run is PARENT (default: the latest of the name)")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of evaluation images")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results JSON here")
    parser.add_argument("--name", default=None, help="curve name in the JSON (default: the first checkpoint's name)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
    add_quiet_option(parser)
    lof = parser.add_argument_group("latent overfitting (trainables/lof.py): refine each image's latents at "
                                    "encode time, decoder unchanged; one curve per setting")
    lof.add_argument("--lof-iterations", default=None, metavar="K,K,..",
                     help="refinement steps per setting, e.g. 0,50,200 (0 = plain encoding); with --json OUT, "
                          "setting S writes OUT-S.json (e.g. results-lof50-lr0.005.json)")
    lof.add_argument("--lof-lr", default="0.005", metavar="LR,LR,..", help="Adam learning rates (default 0.005)")
    lof.add_argument("--lof-latents", choices=("y", "y+z"), default="y", help="latents refined (default y)")
    lof.add_argument("--lof-proxy", choices=("noise", "ste", "sga"), default="sga",
                     help="rounding proxy while refining (default sga: stochastic Gumbel annealing)")
    parser.set_defaults(func=run)


def _numbers(text: str, kind: type, flag: str) -> list:
    from trainables.evaluation import EvaluationError

    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvaluationError(f"{flag} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None


def _settings(args: argparse.Namespace) -> Optional[list]:
    """The LOF settings asked for (None: plain encoding only)."""
    from trainables.lof import lof_settings

    if args.lof_iterations is None:
        return None
    return lof_settings(_numbers(args.lof_iterations, int, "--lof-iterations"),
                        _numbers(args.lof_lr, float, "--lof-lr"), args.lof_latents, args.lof_proxy)


def _evaluations(args: argparse.Namespace, checkpoint: Path, settings: Optional[list],
                 on_image) -> list[tuple[Optional[str], Any]]:
    """(LOF setting label or None, EvalResult) for one checkpoint."""
    from trainables.evaluation import evaluate_checkpoint
    from trainables.lof import evaluate_checkpoint_lof

    if settings is None:
        return [(None, evaluate_checkpoint(checkpoint, args.data, device=args.device, max_images=args.max_images,
                                           on_image=on_image))]
    results = evaluate_checkpoint_lof(checkpoint, args.data, settings, device=args.device, max_images=args.max_images,
                                      on_image=on_image)
    return [(s.label, r) for s, r in zip(settings, results)]


def _print_table(result) -> None:
    header = ["image", "size", "bpp", "bpp (est.)", "overhead", "PSNR", "MS-SSIM", "enc ms", "dec ms",
              "max|dec-fwd|"]

    def row(name, size, r_bpp, r_est, overhead, psnr, ms_ssim, enc, dec, err):
        return [name, size, f"{r_bpp:.4f}", f"{r_est:.4f}", f"{100 * overhead:+.2f}%", f"{psnr:.2f}",
                "-" if ms_ssim is None else f"{ms_ssim:.4f}", f"{1000 * enc:.1f}", f"{1000 * dec:.1f}",
                f"{err:.1e}"]

    rows = [row(r.name, f"{r.width}x{r.height}", r.bpp, r.likelihood_bpp, r.rate_overhead, r.psnr, r.ms_ssim,
                r.encoding_time, r.decoding_time, r.max_decode_error) for r in result.images]
    rows.append(row("mean", "", result.mean("bpp"), result.mean("likelihood_bpp"), result.rate_overhead,
                    result.mean("psnr"), result.mean("ms_ssim"), result.mean("encoding_time"),
                    result.mean("decoding_time"), result.max_decode_error))
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for line in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def _print_result(checkpoint: Path, label: Optional[str], result, data: Path) -> None:
    """One checkpoint (under one LOF setting): its table and the two checks."""
    from trainables.evaluation import DECODE_TOLERANCE

    lmbda = "" if result.lmbda is None else f", λ = {result.lmbda:g}"
    lmbda += "" if label is None else f", latent overfitting {label}"
    sizes = ", ".join(f"{n} x {size}" for size, n in result.image_set()["sizes"].items())
    print(f"\ncheckpoint {checkpoint}{lmbda}: {len(result.images)} images ({sizes}) from {data}")
    _print_table(result)
    verdict = "ok" if result.decoded_matches else "FAILED"
    print(f"check: decoded image == forward reconstruction (max |diff| {result.max_decode_error:.1e}, "
          f"tolerance {DECODE_TOLERANCE:g}): {verdict}")
    print(f"check: bitstream bpp is {100 * result.rate_overhead:+.2f}% against the likelihood estimate")
    if result.rate_overhead > RATE_NOTE:
        print(f"note: {checkpoint}: the bitstream is {100 * result.rate_overhead:.1f}% above the likelihood "
              "estimate (small images or untrained entropy models make the fixed cost of the strings large)",
              file=sys.stderr)


def _write_curve(out: Path, label: Optional[str], results: list, name: str, data: Path) -> None:
    """One curve in CompressAI's results format; LOF setting S goes to OUT-S.json."""
    from search.analysis.curves import evaluation_curve

    out = out if label is None else out.with_name(f"{out.stem}-{label}{out.suffix}")
    curve = evaluation_curve(results, name if label is None else f"{name} {label}",
                             f"lic-search eval on {data} (CompressAI range coder)"
                             + ("" if label is None else f", latent overfitting {label}"))
    payload = curve.to_dict()
    payload.setdefault("lic_search", {})["evaluations"] = [r.to_dict() for r in results]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")


def _sweep(args: argparse.Namespace) -> int:
    """``--search NAME``: every LOF setting on the best trial of every rate point (search/analysis/lof_sweep.py)."""
    from search.analysis.lof_sweep import rd_loss, setting_results, sweep_search
    from search.monitor.meter import Meter
    from search.space.strata import stratum_label
    from search.tracking.queries import select_search
    from trainables.evaluation import EvaluationError

    if args.checkpoints or args.lof_iterations is None:
        raise EvaluationError("--search NAME sweeps LOF settings over the search's best trials: give "
                              "--lof-iterations (e.g. 0,50) and no CHECKPOINT")
    settings = _settings(args)
    selection = select_search(args.search, args.tracking_uri, args.run_id)
    print(selection.describe())
    with Meter("eval --search", "image") as meter:
        swept = sweep_search(selection, args.data, settings, device=args.device, max_images=args.max_images,
                             progress=meter)
    for index, setting in enumerate(settings):
        for trial in swept:
            r, loss = trial.results[index], rd_loss(trial.results[index], trial.distortion)
            print(f"{setting.label:<18} {stratum_label(trial.stratum):<32} bpp {r.mean('bpp'):.4f}  "
                  f"PSNR {r.mean('psnr'):.2f}  R-D loss {math.nan if loss is None else loss:.4f}  "
                  f"encode {r.mean('encoding_time'):.3f} s")
        if args.json is not None:
            _write_curve(args.json, setting.label, setting_results(swept, index), args.name or args.search, args.data)
    bad = [t.checkpoint for t in swept if not all(r.decoded_matches for r in t.results)]
    if bad:
        print(f"lic-search: error: decoded images differ from the forward reconstruction for "
              f"{', '.join(map(str, bad))}", file=sys.stderr)
    return 1 if bad else 0


def run(args: argparse.Namespace) -> int:
    from search.analysis.eval_progress import ImageProgress, image_count
    from search.monitor import meter as meters
    from search.monitor.meter import Meter
    from trainables.evaluation import EvaluationError

    meters.configure(args.quiet)
    if args.max_images is not None and args.max_images < 1:
        raise EvaluationError(f"--max-images must be >= 1, got {args.max_images}")
    if args.search is not None:
        return _sweep(args)
    if not args.checkpoints:
        raise EvaluationError("lic-search eval needs a CHECKPOINT (or --search NAME for an LOF sweep)")
    settings = _settings(args)
    labelled, failed = [], []
    total = len(args.checkpoints) * len(settings or [None]) * image_count(args.data, args.max_images)
    with Meter("eval", "image", total) as meter:
        meter.written = "nothing (the --json curves are written at the end)" if args.json else "nothing"
        progress = ImageProgress(meter)
        for checkpoint in args.checkpoints:
            progress.at("/".join(checkpoint.parts[-2:]))
            for label, result in _evaluations(args, checkpoint, settings, progress):
                labelled.append((label, result))
                with meter.paused():
                    _print_result(checkpoint, label, result, args.data)
                if not result.decoded_matches:
                    failed.append(checkpoint)
    for label in dict.fromkeys(label for label, _ in labelled) if args.json is not None else ():
        results = [r for lab, r in labelled if lab == label]  # one curve per LOF setting
        _write_curve(args.json, label, results, args.name or args.checkpoints[0].resolve().name, args.data)
    if failed:
        print(f"lic-search: error: decoded images differ from the forward reconstruction for "
              f"{', '.join(map(str, failed))}: the bitstream does not reproduce the model's output", file=sys.stderr)
        return 1
    return 0
