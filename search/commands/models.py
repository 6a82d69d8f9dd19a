"""`lic-search models`: registered backbones with their size and cost, with and without AuxT.

Sizes a search before it is launched: parameters and multiply-accumulates (MACs) of one
forward pass on a 768x512 image (the Kodak size of the paper's Table 1), at each
backbone's default widths.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from search.errors import LicSearchError

WIDTH, HEIGHT = 768, 512
PROBE = 128  # MACs are measured at 128x128 and scaled: exact, see trainables.model.count_macs


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list registered backbones with parameters and MACs (768x512), with and without AuxT"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    parser.add_argument("--backbone", action="append", default=None, metavar="NAME",
                        help="only this backbone (repeatable); default: all registered")
    parser.add_argument("--params-only", action="store_true",
                        help="skip the MAC count (no forward pass; macs fields are null)")
    parser.set_defaults(func=_models)


def backbone_summary(name: str, with_macs: bool = True) -> dict[str, Optional[int]]:
    """``{name, params, params_auxt, macs, macs_auxt}`` at the backbone's default widths."""
    from trainables.config import ModelConfig
    from trainables.model import count_macs, count_parameters, create_model

    row: dict = {"name": name}
    for suffix, enabled in (("", False), ("_auxt", True)):
        model = create_model(ModelConfig(backbone=name, auxt={"enabled": enabled}))
        row[f"params{suffix}"] = count_parameters(model)
        row[f"macs{suffix}"] = count_macs(model, HEIGHT, WIDTH, probe=PROBE) if with_macs else None
    return {key: row[key] for key in ("name", "params", "params_auxt", "macs", "macs_auxt")}


def _fmt(value: Optional[int], unit: float, digits: int = 1) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}"


def _models(args) -> int:
    from trainables.backbones import BACKBONES

    names = args.backbone or sorted(BACKBONES)
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise LicSearchError(
            f"--backbone must name a registered backbone, but got {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(BACKBONES))}"
        )
    rows = [backbone_summary(name, with_macs=not args.params_only) for name in names]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    header = f"{'backbone':<14} {'N':>4} {'M':>4} {'params (M)':>11} {'+AuxT':>7} {'GMACs':>8} {'+AuxT':>8}  description"
    print(header)
    print("-" * len(header))
    for row in rows:
        spec = BACKBONES[row["name"]]
        print(f"{row['name']:<14} {spec.N:>4} {spec.M:>4} {_fmt(row['params'], 1e6):>11} "
              f"{_fmt(row['params_auxt'], 1e6):>7} {_fmt(row['macs'], 1e9):>8} {_fmt(row['macs_auxt'], 1e9):>8}  "
              f"{spec.description}")
    print(f"\nMACs: one forward pass (analysis, hyperprior, entropy parameters, synthesis) on a "
          f"{WIDTH}x{HEIGHT} image; AuxT with its default settings.")
    return 0
