"""`lic-search bd-rate CURVE.json`: BD-rate of any R-D curve against an anchor (default: VTM on Kodak)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from search.analysis.bdrate import LOW_OVERLAP, METHODS, METRICS, bd_rate
from search.analysis.curves import (
    RATE_BITSTREAM,
    RATE_LIKELIHOOD,
    RDCurve,
    check_comparable,
    load_curve,
    shipped_anchor,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bd-rate",
        help="BD-rate of an R-D curve (CompressAI results JSON) against an anchor curve",
        description="Bjøntegaard-delta rate of CURVE against ANCHOR, both in CompressAI's results format "
                    "({\"name\", \"results\": {\"bpp\": [...], \"psnr-rgb\": [...], \"ms-ssim-rgb\": [...]}}). "
                    "Negative = CURVE needs fewer bits than ANCHOR at equal quality.",
    )
    parser.add_argument("curve", type=Path, metavar="CURVE.json", help="the curve to rate (e.g. from lic-search eval)")
    parser.add_argument("--anchor", type=Path, default=None, metavar="ANCHOR.json",
                        help="anchor curve (default: VTM on Kodak, shipped with lic-search)")
    parser.add_argument("--metric", choices=METRICS, default="psnr",
                        help="quality axis; ms-ssim is compared in dB, -10*log10(1-MS-SSIM) (default: psnr)")
    parser.add_argument("--method", choices=METHODS, default="pchip", help="interpolation (default: pchip)")
    parser.add_argument("--allow-other-set", action="store_true",
                        help="compute the BD-rate even when CURVE was measured on other images than ANCHOR "
                             "(e.g. not the 24 Kodak images of the shipped VTM anchor); only warn")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(func=run)


def _provenance(curve: RDCurve) -> str:
    images = curve.image_set.describe() if curve.image_set else "images not recorded"
    rate = {RATE_BITSTREAM: "bpp from the bitstream", RATE_LIKELIHOOD: "bpp from the likelihoods (an estimate)"}
    return f"{images}; {rate.get(curve.rate, 'rate source not recorded')}"


def run(args: argparse.Namespace) -> int:
    anchor_path = args.anchor if args.anchor is not None else shipped_anchor("kodak", "vtm")
    test = load_curve(args.curve)
    anchor = load_curve(anchor_path)
    note = check_comparable(test, anchor, allow_other_set=args.allow_other_set)  # refuses across image sets
    result = bd_rate(test, anchor, metric=args.metric, method=args.method)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        payload = result.to_dict()
        payload.update(test_file=str(args.curve), anchor_file=str(anchor_path), note=note,
                       test_images=test.image_set and test.image_set.to_dict(),
                       anchor_images=anchor.image_set and anchor.image_set.to_dict(), test_rate=test.rate)
        print(json.dumps(payload, indent=2))
        return 0
    unit = "PSNR" if args.metric == "psnr" else "MS-SSIM (dB)"
    print(f"test:    {test.name} ({args.curve}, {result.test_points} points; {_provenance(test)})")
    print(f"anchor:  {anchor.name} ({'shipped VTM on Kodak' if args.anchor is None else anchor_path}, "
          f"{result.anchor_points} points; {_provenance(anchor)})")
    print(f"metric:  {args.metric}, {args.method} interpolation, curves overlap on {result.overlap:.0%} "
          f"of the {unit} range")
    print(f"BD-rate: {result.bd_rate:+.2f}%")
    if result.bd_quality is not None:
        print(f"BD-{'PSNR' if args.metric == 'psnr' else 'MS-SSIM'}: {result.bd_quality:+.3f} dB")
    if result.overlap < LOW_OVERLAP:
        print(f"note: the curves overlap on only {result.overlap:.0%} of the {unit} range; "
              "BD-rate averages over that overlap", file=sys.stderr)
    return 0
