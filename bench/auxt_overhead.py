"""AuxT training overhead: forward+backward time with AuxT / without, per backbone.

Both models of a backbone are timed side by side in one run, interleaved repeat by
repeat so that drift in machine load hits both alike; the ratio of the medians is
reported with parameters and MACs (paper Table 1 / issue 3 target: <= 1.05 on a GPU).

    python bench/auxt_overhead.py                       # GPU: 256x256, batch 8; CPU: 128x128, batch 1
    python bench/auxt_overhead.py --size 128 --batch 1 --output bench/results/auxt_overhead_cpu.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import command_line, interleaved  # noqa: E402

from trainables.backbones import BACKBONES  # noqa: E402
from trainables.config import ModelConfig  # noqa: E402
from trainables.model import LICModel, count_macs, count_parameters, create_model  # noqa: E402


def _step(model: LICModel, x: torch.Tensor, amp: Optional[torch.dtype]) -> None:
    """One training-style pass: forward, R-D-like loss with the ortho penalty, backward."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = model(x)
    bits = sum(-torch.log2(t.float()).sum() for t in out["likelihoods"].values())
    loss = torch.mean((out["x_hat"].float() - x) ** 2) + 0.01 * bits / x.numel() + 0.1 * model.ortho_loss()
    loss.backward()


def measure(name: str, size: int, batch: int, repeats: int, warmup: int, device: torch.device,
            amp: Optional[torch.dtype], channels_last: bool, N: Optional[int] = None, M: Optional[int] = None) -> dict:
    """Plain and AuxT models of backbone ``name`` (widths N, M; None = defaults), timed interleaved."""
    models = {}
    for key, enabled in (("plain", False), ("auxt", True)):
        torch.manual_seed(0)
        model = create_model(ModelConfig(backbone=name, N=N, M=M, auxt={"enabled": enabled})).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[key] = model
    row: dict = {"name": name}
    for key, model in models.items():
        suffix = "" if key == "plain" else "_auxt"
        row[f"params{suffix}"] = count_parameters(model)
        row[f"macs{suffix}"] = count_macs(model, size, size)
        model.train()
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = interleaved({key: (lambda m=model: _step(m, x, amp)) for key, model in models.items()},
                        repeats, warmup, device)
    row["time"] = statistics.median(times["plain"])
    row["time_auxt"] = statistics.median(times["auxt"])
    row["ratio"] = row["time_auxt"] / row["time"]
    row["ratio_min"] = min(times["auxt"]) / min(times["plain"])
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def to_markdown(rows: list[dict], args: argparse.Namespace, device: torch.device, command: str) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)"
    lines = [
        f"# AuxT overhead: forward+backward with AuxT / without ({device.type.upper()})",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {where}; torch {torch.__version__}; input {args.batch}x3x{args.size}x{args.size}; "
        f"amp {args.amp}; {args.repeats} interleaved repeats after {args.warmup} warm-up passes; "
        "default widths; AuxT with default settings (Haar, 4 WLS + 4 iWLS).",
        "",
        "| backbone | params (M) | +AuxT (M) | GMACs | +AuxT GMACs | time (ms) | +AuxT (ms) | ratio (median) | ratio (min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['params_auxt'] / 1e6:.2f} | {r['macs'] / 1e9:.2f} | "
            f"{r['macs_auxt'] / 1e9:.2f} | {r['time'] * 1e3:.1f} | {r['time_auxt'] * 1e3:.1f} | "
            f"{r['ratio']:.3f} | {r['ratio_min']:.3f} |"
        )
    lines += ["", f"MACs are per forward pass at the benchmark's input size ({args.size}x{args.size}, batch 1)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", action="append", default=None, choices=sorted(BACKBONES),
                        help="repeatable; default: all registered")
    parser.add_argument("--size", type=int, default=256 if cuda else 128, help="square input side (multiple of 64)")
    parser.add_argument("--batch", type=int, default=8 if cuda else 1)
    parser.add_argument("--repeats", type=int, default=20 if cuda else 5)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.size % 64:
        parser.error(f"--size must be a multiple of 64, but got {args.size}")
    device = torch.device("cuda" if args.device == "auto" and cuda else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    command = command_line("bench/auxt_overhead.py", argv)
    rows = []
    for name in args.backbone or sorted(BACKBONES):
        row = measure(name, args.size, args.batch, args.repeats, args.warmup, device, amp, args.channels_last)
        print(f"{name:<14} {row['time'] * 1e3:9.1f} ms  {row['time_auxt'] * 1e3:9.1f} ms  ratio {row['ratio']:.3f}",
              flush=True)
        rows.append(row)
    report = to_markdown(rows, args, device, command)
    print("\n" + report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
