"""Decode time against image size: msp-style profiles vs CompressAI's serial ``mbt2018``; LLIC-style STB cost.

The msp-style model decodes ŷ in ``steps`` passes whatever the image size; CompressAI's
``mbt2018`` (JointAutoregressiveHierarchicalPriors, Minnen et al. 2018) decodes it one latent
position at a time (O(n) steps). Both at equal widths (N = 192, M = 320 by default), untrained
(random weights: decode time depends on the networks and the number of symbols, not on what
the weights learned), each image coded once and decoded ``--repeats`` times (median). The
profiles share every weight (they differ only in the schedule), so one model is timed at each
``steps``. Reported per size: full decode time (``decompress``: entropy decoding + g_s), the
synthesis ``g_s`` alone on the same ŷ, and latent decoding = full − g_s; ratios mbt2018 ÷ msp.
Issue 22's target: ≥ 10x full decode at 768x512 (the paper claims > 20x on 2K images, on a GPU).

Second table: the llic-style STB (DepthRB, K x K depth-wise conv with self-conditioned kernels,
1x1) and its self-conditioned K x K convolution alone, against one static depth-wise K x K
convolution, on the feature maps of a 768x512 image (stage 1: 384x256; stage 3: 96x64).

    python bench/decode_time.py --threads 2 --output bench/results/decode_time_cpu.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import command_line, device_label, elapsed, interleaved  # noqa: E402

from trainables.backbones.llic import STB, LargeKernelConv  # noqa: E402
from trainables.backbones.msp import MSPStyle  # noqa: E402

SIZES = ((256, 256), (512, 512), (512, 768), (1024, 1024))  # (height, width)


def _median(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    return statistics.median(elapsed(call, device) for _ in range(repeats))


def _decode_times(model: nn.Module, x: torch.Tensor, repeats: int, device: torch.device) -> dict:
    """Full decode time, g_s time on the decoded ŷ, and the difference (latent decoding)."""
    encoded = model.compress(x)
    decoded = model.decompress(encoded["strings"], encoded["shape"])
    assert decoded["x_hat"].shape == x.shape
    full = _median(lambda: model.decompress(encoded["strings"], encoded["shape"]), repeats, device)
    y_hat = torch.zeros(1, model.M, x.shape[2] // 16, x.shape[3] // 16, device=device)
    synthesis = _median(lambda: model.g_s(y_hat), repeats, device)
    return {"full": full, "g_s": synthesis, "latent": max(full - synthesis, 0.0),
            "bytes": sum(len(s) for group in encoded["strings"] for s in group)}


@torch.no_grad()
def decode_table(sizes, profiles, N: int, M: int, repeats: int, serial_repeats: int, device: torch.device,
                 serial_sizes=None) -> list[dict]:
    from compressai.models import JointAutoregressiveHierarchicalPriors

    torch.manual_seed(0)
    msp = MSPStyle(N=N, M=M, steps=profiles[0]).to(device).eval()
    msp.update(force=True)
    serial = JointAutoregressiveHierarchicalPriors(N=N, M=M).to(device).eval()
    serial.update(force=True)
    rows = []
    for height, width in sizes:
        x = torch.rand(1, 3, height, width, device=device)
        row: dict = {"size": f"{width}x{height}", "positions": (height // 16) * (width // 16)}
        if serial_sizes is None or (height, width) in serial_sizes:
            row["mbt2018"] = _decode_times(serial, x, serial_repeats, device)
        for steps in profiles:
            msp.steps = steps
            row[steps] = _decode_times(msp, x, repeats, device)
        rows.append(row)
        print(f"{row['size']}: mbt2018 {row['mbt2018']['full'] if 'mbt2018' in row else '-'} s; "
              + ", ".join(f"msp{s} {row[s]['full']:.3f} s" for s in profiles), file=sys.stderr)
    return rows


@torch.no_grad()
def stb_table(channels: int, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for kernel, (height, width) in ((11, (256, 384)), (9, (64, 96))):
        torch.manual_seed(0)
        x = torch.randn(1, channels, height, width, device=device)
        static = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels).to(device).eval()
        adaptive = LargeKernelConv(channels, kernel, self_conditioned=True).to(device).eval()
        block = STB(channels, kernel, self_conditioned=True).to(device).eval()
        times = interleaved({"static": lambda: static(x), "adaptive": lambda: adaptive(x), "stb": lambda: block(x)},
                            repeats=repeats, warmup=1, device=device)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"kernel": kernel, "map": f"{channels}x{height}x{width}", **med})
    return rows


def _fmt(value: Optional[float]) -> str:
    return "not run" if value is None else f"{value:.3f}"


def _ratio(serial: Optional[float], value: float) -> str:
    return "-" if serial is None else f"{serial / max(value, 1e-9):.1f}x"


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def render(rows: list[dict], stb: list[dict], profiles, args, command: str, device: torch.device) -> str:
    lines = ["# Decode time: msp-style profiles vs CompressAI's serial mbt2018 (and the llic-style STB)", "",
             f"Command: `{command}`", "",
             f"Device: {device_label(device)}; load average {args.load} at the start; torch "
             f"{torch.__version__}; N = {args.N}, M = {args.M} for both models, random weights; batch 1; median of "
             f"{args.repeats} decodes (mbt2018: {args.serial_repeats}) after one untimed decode.", "",
             "## Full decode time (s): entropy decoding + g_s", "",
             "| image | latent positions | mbt2018 (serial) | " + " | ".join(f"msp steps={s}" for s in profiles)
             + " | " + " | ".join(f"ratio steps={s}" for s in profiles) + " |",
             "|---|---:|---:|" + "---:|" * (2 * len(profiles))]
    for row in rows:
        serial = row["mbt2018"]["full"] if "mbt2018" in row else None
        lines.append(f"| {row['size']} | {row['positions']} | {_fmt(serial)} | "
                     + " | ".join(f"{row[s]['full']:.3f}" for s in profiles) + " | "
                     + " | ".join(_ratio(serial, row[s]["full"]) for s in profiles) + " |")
    lines += ["", "## Latent decoding alone (s): full decode − g_s on the same ŷ", "",
              "| image | g_s (mbt2018) | g_s (msp) | mbt2018 (serial) | "
              + " | ".join(f"msp steps={s}" for s in profiles)
              + " | " + " | ".join(f"ratio steps={s}" for s in profiles) + " |",
              "|---|---:|---:|---:|" + "---:|" * (2 * len(profiles))]
    for row in rows:
        serial = row["mbt2018"]["latent"] if "mbt2018" in row else None
        serial_gs = row["mbt2018"]["g_s"] if "mbt2018" in row else None
        lines.append(f"| {row['size']} | {_fmt(serial_gs)} | {row[profiles[0]]['g_s']:.3f} | {_fmt(serial)} | "
                     + " | ".join(f"{row[s]['latent']:.3f}" for s in profiles) + " | "
                     + " | ".join(_ratio(serial, row[s]["latent"]) for s in profiles) + " |")
    lines += ["", "## LLIC-style STB against a static depth-wise convolution (ms, median)", "",
              "| K | feature map (C x H x W) | static dw KxK | self-conditioned KxK | ratio | whole STB | ratio |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for row in stb:
        lines.append(f"| {row['kernel']} | {row['map']} | {1e3 * row['static']:.1f} | {1e3 * row['adaptive']:.1f} | "
                     f"{row['adaptive'] / row['static']:.2f} | {1e3 * row['stb']:.1f} | "
                     f"{row['stb'] / row['static']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--N", type=int, default=192)
    parser.add_argument("--M", type=int, default=320)
    parser.add_argument("--profiles", default="2,4,8", help="msp-style steps to time (comma list)")
    parser.add_argument("--sizes", default=None, help="WxH list, e.g. 256x256,768x512 (default: 256², 512², "
                        "768x512, 1024²)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serial-repeats", type=int, default=1, help="repeats of the (slow) serial decode")
    parser.add_argument("--serial-sizes", default=None, help="WxH list: run the serial mbt2018 only at these sizes "
                        "(default: every size; it takes minutes per megapixel on a CPU)")
    parser.add_argument("--stb-channels", type=int, default=192)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    args.load = _load()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    profiles = [int(s) for s in args.profiles.split(",")]
    sizes = SIZES if args.sizes is None else [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes.split(",")]
    serial_sizes = None if args.serial_sizes is None else [tuple(int(v) for v in s.split("x"))[::-1]
                                                            for s in args.serial_sizes.split(",")]
    rows = decode_table(sizes, profiles, args.N, args.M, args.repeats, args.serial_repeats, device, serial_sizes)
    stb = stb_table(args.stb_channels, max(args.repeats, 3), device)
    text = render(rows, stb, profiles, args, command_line("bench/decode_time.py", argv), device)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
