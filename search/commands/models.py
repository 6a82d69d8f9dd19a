"""`lic-search models`: registered backbones with their size and cost, with and without AuxT.

Sizes a search before it is launched: parameters and multiply-accumulates (MACs) of one
forward pass on a 768x512 image (the Kodak size of the paper's Table 1), at each
backbone's default widths.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

from search.errors import LicSearchError
from search.experiment.atomic import write_local_text

WIDTH, HEIGHT = 768, 512
PROBE = 128  # MACs measured at 128x128 and 128x256, extrapolated exactly: see trainables.model.count_macs


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list registered backbones with parameters and MACs (768x512), with and without AuxT"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    parser.add_argument("--backbone", action="append", default=None, metavar="NAME",
                        help="only this backbone (repeatable); default: all registered")
    parser.add_argument("--params-only", action="store_true",
                        help="skip the MAC count (no forward pass; macs fields are null)")
    parser.add_argument("--no-cache", action="store_true",
                        help="recount instead of reading $XDG_CACHE_HOME/lic-search/models.json")
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


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lic-search" / "models.json"


def _code_key(name: str) -> str:
    """Changes whenever the code that defines the models (or torch / CompressAI) changes."""
    import compressai
    import torch

    import trainables

    digest = hashlib.sha256(f"{name}|{WIDTH}x{HEIGHT}|{torch.__version__}|{compressai.__version__}".encode())
    package = Path(trainables.__file__).parent
    for path in sorted([*package.glob("backbones/*.py"), *package.glob("auxt/*.py"),
                        package / "model.py", package / "config.py"]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _cached_summary(name: str, with_macs: bool, use_cache: bool) -> dict[str, Optional[int]]:
    """:func:`backbone_summary`, from the cache when the code has not changed since it was counted."""
    if not use_cache:
        return backbone_summary(name, with_macs)
    file = _cache_file()
    try:
        cache = json.loads(file.read_text())
    except (OSError, ValueError):
        cache = {}
    key = _code_key(name)
    hit = cache.get(key)
    if hit and (hit["macs"] is not None or not with_macs):
        return hit if with_macs else {**hit, "macs": None, "macs_auxt": None}
    row = backbone_summary(name, with_macs)
    cache[key] = row
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_local_text(str(file), json.dumps(cache, indent=1))  # a crash never leaves half a cache
    except OSError:
        pass  # a read-only home only costs a recount next time
    return row


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
    rows = [_cached_summary(name, not args.params_only, not args.no_cache) for name in names]
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
