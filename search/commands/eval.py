"""`lic-search eval CHECKPOINT --data DIR`: real compress/decompress of every image, CompressAI-format JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

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
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of evaluation images")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results JSON here")
    parser.add_argument("--name", default=None, help="curve name in the JSON (default: the first checkpoint's name)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
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


def _evaluations(args: argparse.Namespace, checkpoint: Path) -> list[tuple[Optional[str], Any]]:
    """(LOF setting label or None, EvalResult) for one checkpoint."""
    from trainables.evaluation import evaluate_checkpoint
    from trainables.lof import evaluate_checkpoint_lof, lof_settings

    if args.lof_iterations is None:
        return [(None, evaluate_checkpoint(checkpoint, args.data, device=args.device, max_images=args.max_images))]
    settings = lof_settings(_numbers(args.lof_iterations, int, "--lof-iterations"),
                            _numbers(args.lof_lr, float, "--lof-lr"), args.lof_latents, args.lof_proxy)
    results = evaluate_checkpoint_lof(checkpoint, args.data, settings, device=args.device, max_images=args.max_images)
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


def run(args: argparse.Namespace) -> int:
    from search.curves import evaluation_curve
    from trainables.evaluation import DECODE_TOLERANCE, EvaluationError

    if args.max_images is not None and args.max_images < 1:
        raise EvaluationError(f"--max-images must be >= 1, got {args.max_images}")
    labelled = []
    failed = []
    for checkpoint, (label, result) in ((c, e) for c in args.checkpoints for e in _evaluations(args, c)):
        labelled.append((label, result))
        lmbda = "" if result.lmbda is None else f", λ = {result.lmbda:g}"
        lmbda += "" if label is None else f", latent overfitting {label}"
        sizes = ", ".join(f"{n} x {size}" for size, n in result.image_set()["sizes"].items())
        print(f"\ncheckpoint {checkpoint}{lmbda}: {len(result.images)} images ({sizes}) from {args.data}")
        _print_table(result)
        verdict = "ok" if result.decoded_matches else "FAILED"
        print(f"check: decoded image == forward reconstruction (max |diff| {result.max_decode_error:.1e}, "
              f"tolerance {DECODE_TOLERANCE:g}): {verdict}")
        print(f"check: bitstream bpp is {100 * result.rate_overhead:+.2f}% against the likelihood estimate")
        if result.rate_overhead > RATE_NOTE:
            print(f"note: {checkpoint}: the bitstream is {100 * result.rate_overhead:.1f}% above the likelihood "
                  "estimate (small images or untrained entropy models make the fixed cost of the strings large)",
                  file=sys.stderr)
        if not result.decoded_matches:
            failed.append(checkpoint)
    for label in dict.fromkeys(label for label, _ in labelled) if args.json is not None else ():
        results = [r for lab, r in labelled if lab == label]  # one curve per LOF setting
        name = args.name or args.checkpoints[0].resolve().name
        out = args.json if label is None else args.json.with_name(f"{args.json.stem}-{label}{args.json.suffix}")
        curve = evaluation_curve(results, name if label is None else f"{name} {label}",
                                 f"lic-search eval on {args.data} (CompressAI range coder)"
                                 + ("" if label is None else f", latent overfitting {label}"))
        payload = curve.to_dict()
        payload.setdefault("lic_search", {})["evaluations"] = [r.to_dict() for r in results]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {out}")
    if failed:
        print(f"lic-search: error: decoded images differ from the forward reconstruction for "
              f"{', '.join(map(str, failed))}: the bitstream does not reproduce the model's output", file=sys.stderr)
        return 1
    return 0
