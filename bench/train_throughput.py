"""Training throughput, measured side by side in one run:

1. iterations/s of the trainable inside Ray Tune  ÷  a bare loop over the same model and data
   (target ≥ 0.97). Inside Ray it is read two ways: the engine's own step rate between
   evaluations (``train/iters_per_s``), and wall time between reports, which also pays for
   evaluation, checkpointing and reporting.
2. data-loader images/s  ÷  images/s the training step consumes (target ≥ 2).

    python bench/train_throughput.py --data samples/kodak-crops/train --eval samples/kodak-crops/eval \
        --N 32 --M 48 --crop 64 --batch 8 --iterations 200

On a GPU machine: ``--device cuda --N 128 --M 192 --crop 256 --batch 16`` (mbt2018-mean at 256×256,
batch 16), with and without ``--auxt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import sync  # noqa: E402
from dataloader_throughput import measure  # noqa: E402

from trainables import metrics as M  # noqa: E402
from trainables.config import DataConfig, TrialConfig  # noqa: E402
from trainables.data.images import make_train_loader  # noqa: E402
from trainables.losses import RateDistortionLoss  # noqa: E402
from trainables.model import create_model  # noqa: E402


def trial_config(args) -> dict:
    return {
        "model": {"backbone": args.backbone, "N": args.N, "M": args.M, "auxt": {"enabled": args.auxt}},
        "data": {"train": str(Path(args.data).resolve()), "eval": str(Path(args.eval).resolve()),
                 "crop_size": args.crop, "batch_size": args.batch, "num_workers": args.workers,
                 "max_eval_images": 2},
        "loss": {"lmbda": 0.013},
        "schedule": {"iterations": args.iterations, "eval_every": args.eval_every, "lr": 1e-4, "seed": 0},
        "performance": {"device": args.device},
    }


def bare_loop(config: TrialConfig, iterations: int, warmup: int = 10) -> float:
    """The minimal hand-written loop: forward, R-D + orthogonality loss, both optimizers."""
    device = torch.device("cuda" if config.performance.device == "cuda" else "cpu")
    torch.manual_seed(0)
    model = create_model(config.model).to(device).train()
    optimizer = torch.optim.Adam(model.main_parameters(), lr=config.schedule.lr)
    aux_optimizer = torch.optim.Adam(model.aux_parameters(), lr=config.schedule.aux_lr)
    criterion = RateDistortionLoss(config.loss.distortion, config.loss.lmbda)
    stream = make_train_loader(config.data, seed=0, device_type=device.type)
    started = 0.0
    for step in range(warmup + iterations):
        if step == warmup:
            sync(device)
            started = time.perf_counter()
        batch = next(stream).to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        loss = criterion(out, batch)["loss"] + config.model.auxt.lambda_orth * model.ortho_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.main_parameters(), 1.0)
        optimizer.step()
        aux = model.aux_loss()
        aux.backward()
        aux_optimizer.step()
    sync(device)
    return iterations / (time.perf_counter() - started)


def ray_trainable(config: dict, cpus: float, gpus: float) -> tuple[float, float]:
    """(mean engine step rate, wall-clock rate between reports) of one trial inside Ray Tune."""
    import ray
    from ray import tune

    from trainables.training.trainable import train_lic

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as storage:
            tuner = tune.Tuner(
                tune.with_resources(train_lic, {"cpu": cpus, "gpu": gpus}), param_space=config,
                run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
            )
            result = tuner.fit()[0]
            history = result.metrics_dataframe
    finally:
        ray.shutdown()
    rates = history[M.TRAIN_ITERS_PER_S].tolist()[1:]  # the first interval includes warm-up
    stamps = history["time_total_s"].tolist()
    its = history[M.ITERATIONS].tolist()
    wall = (its[-1] - its[1]) / max(stamps[-1] - stamps[1], 1e-9) if len(its) > 2 else float("nan")
    return sum(rates) / len(rates), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="samples/kodak-crops/train")
    parser.add_argument("--eval", default="samples/kodak-crops/eval")
    parser.add_argument("--backbone", default="mbt2018-mean")
    parser.add_argument("--N", type=int, default=32)
    parser.add_argument("--M", type=int, default=48)
    parser.add_argument("--auxt", action="store_true")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU) for every measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw = trial_config(args)
    config = TrialConfig.model_validate(raw)
    bare = bare_loop(config, args.iterations)
    engine_rate, wall_rate = ray_trainable(raw, cpus=args.threads, gpus=1 if args.device == "cuda" else 0)
    loader = measure(DataConfig.model_validate(raw["data"]), batches=50, device_type=args.device)
    consumed = bare * args.batch
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "config": {k: v for k, v in vars(args).items()},
        "bare_loop_iters_per_s": bare,
        "ray_engine_iters_per_s": engine_rate,
        "ray_wall_iters_per_s": wall_rate,
        "ratio_ray_engine_vs_bare": engine_rate / bare,
        "ratio_ray_wall_vs_bare": wall_rate / bare,
        "loader_images_per_s": loader["images_per_s"],
        "step_images_per_s": consumed,
        "ratio_loader_vs_step": loader["images_per_s"] / consumed,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
