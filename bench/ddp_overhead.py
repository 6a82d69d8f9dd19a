"""DDP overhead at one worker: the engine's training step with the model in DistributedDataParallel
(a process group of one, gloo on CPU, NCCL on GPU) ÷ the same step on the plain model.

This is what ``resources.workers_per_trial`` adds to each worker before any communication with
other workers: DDP's gradient buckets and hooks, the forward noise drawn through
``trainables.batch_noise`` and, on CPU, the per-step reduction of the divergence flag. The
scaling efficiency at N workers (it/s at N ÷ (N × it/s at 1)) needs N devices and is not
measured here.

    python bench/ddp_overhead.py --N 32 --M 48 --crop 64 --batch 8 --repeats 9 --output bench/results/ddp_overhead_cpu.md
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import REPO, command_line, device_label, interleaved  # noqa: E402

from trainables import batch_noise  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.data.images import make_train_loader  # noqa: E402
from trainables.training import data_parallel  # noqa: E402
from trainables.training.engine import Trainer  # noqa: E402


def _config(args) -> TrialConfig:
    samples = REPO / "samples" / "kodak-crops"
    return TrialConfig.model_validate({
        "model": {"backbone": args.backbone, "N": args.N, "M": args.M, "auxt": {"enabled": args.auxt}},
        "data": {"train": str(samples / "train"), "eval": str(samples / "eval"), "crop_size": args.crop,
                 "batch_size": args.batch, "num_workers": 0},
        "loss": {"lmbda": 0.013},
        "schedule": {"iterations": 10_000, "eval_every": 10_000, "lr": 1e-4, "seed": 0},
        "performance": {"device": args.device},
    })


def _process_group(device: torch.device) -> None:
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mbt2018-mean")
    parser.add_argument("--N", type=int, default=32)
    parser.add_argument("--M", type=int, default=48)
    parser.add_argument("--auxt", action="store_true")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    _process_group(device)
    config = _config(args)
    plain, wrapped = Trainer(config, device=device), Trainer(config, device=device)
    data_parallel.shard_quantization_noise(wrapped.model)
    wrapped.forward = data_parallel.wrap(wrapped.model, device)
    batches = make_train_loader(config.data, seed=0, device_type=device.type)
    batch = next(batches).to(device)

    def steps(trainer: Trainer, reduce_flag: bool):
        def run() -> None:
            with batch_noise.global_batch(0, 1):
                for _ in range(args.steps):
                    terms = trainer._step(batch)
                    if reduce_flag:  # the engine's per-step divergence reduction on CPU (every 50 on GPU)
                        data_parallel.earliest_over_ranks(-1 if all(torch.isfinite(t) for t in terms.values())
                                                          else 0, device)
        return run

    times = interleaved({"plain": steps(plain, False), "ddp": steps(wrapped, device.type == "cpu")},
                        args.repeats, args.warmup, device)
    per_step = {name: [t / args.steps for t in values] for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in per_step.items()}
    best = {name: min(values) for name, values in per_step.items()}
    load = os.getloadavg()[0]
    lines = [
        f"# DDP overhead at one worker: engine step in DistributedDataParallel / plain ({device.type.upper()})", "",
        f"Command: `{command_line('bench/ddp_overhead.py', argv)}`", "",
        f"Device: {device_label(device)}; torch {torch.__version__}; {args.backbone} "
        f"N={args.N} M={args.M}{' + AuxT' if args.auxt else ''}, batch {args.batch}x{args.crop}x{args.crop}; "
        f"{args.repeats} interleaved repeats of {args.steps} steps after {args.warmup} warm-up; "
        f"load average {load:.1f} at the end.", "",
        "| step | median (ms) | min (ms) |", "|---|---:|---:|",
        f"| plain | {median['plain'] * 1e3:.1f} | {best['plain'] * 1e3:.1f} |",
        f"| DDP (world of 1) | {median['ddp'] * 1e3:.1f} | {best['ddp'] * 1e3:.1f} |", "",
        f"Ratio DDP / plain: median {median['ddp'] / median['plain']:.3f}, min {best['ddp'] / best['plain']:.3f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
