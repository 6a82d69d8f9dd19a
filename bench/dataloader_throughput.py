"""Images/s that ``make_train_loader`` delivers, to compare with what a GPU step consumes.

    python bench/dataloader_throughput.py --data samples/kodak-crops/train --crop 64 --batch 8

The loader is the training one (same crops, cache and worker rules); batches are only
received, not sent to a device, so the figure is the data side alone. ``measure`` can be
imported by other benchmarks to put the figure beside a GPU step rate. ``--device-type cuda``
turns on pinned memory and the CUDA worker default, as in training on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script from anywhere: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainables.config import DataConfig  # noqa: E402
from trainables.data.images import make_train_loader, resolve_num_workers  # noqa: E402


def measure(cfg: DataConfig, batches: int = 50, warmup: int = 5, device_type: str = "cpu",
            seed: int = 0) -> dict[str, float]:
    """Time ``batches`` batches after ``warmup`` (start-up, worker spawn, first decode excluded)."""
    started = time.perf_counter()
    stream = make_train_loader(cfg, seed=seed, device_type=device_type)
    for _ in range(warmup):
        next(stream)
    ready = time.perf_counter()
    for _ in range(batches):
        next(stream)
    elapsed = time.perf_counter() - ready
    images = batches * cfg.batch_size
    return {
        "images_per_s": images / elapsed,
        "batches_per_s": batches / elapsed,
        "startup_s": ready - started,
        "images": images,
        "seconds": elapsed,
        "num_workers": resolve_num_workers(cfg, device_type),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of training images")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: automatic)")
    parser.add_argument("--cache", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--small-images", choices=["pad", "resize"], default="pad")
    parser.add_argument("--device-type", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: pinned memory and the CUDA worker default")
    parser.add_argument("--batches", type=int, default=50, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of this process (default 1: workers use 1 each, and "
                             "more threads only oversubscribe the cores for these memory-bound copies)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    cfg = DataConfig(train=args.data, eval=args.data, crop_size=args.crop, batch_size=args.batch,
                     num_workers=args.workers, cache=args.cache, small_images=args.small_images)
    result = measure(cfg, batches=args.batches, warmup=args.warmup, device_type=args.device_type)
    result.update({"data": str(args.data), "crop": args.crop, "batch": args.batch, "cache": args.cache,
                   "device_type": args.device_type})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['images_per_s']:.1f} images/s ({result['batches_per_s']:.2f} batches/s of "
              f"{args.batch}×{args.crop}², {result['num_workers']} workers, cache={args.cache}, "
              f"{args.device_type}; start-up {result['startup_s']:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
