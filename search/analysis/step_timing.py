"""Seconds per training iteration of one trial config, measured with the real engine.

``lic-search estimate`` calls :func:`seconds_per_iteration` once per distinct step
configuration. It runs :meth:`trainables.training.engine.Trainer.train` itself (no second training
loop), evaluating (on one eval image) every ``warmup`` iterations: the first interval warms
up (worker start, cuDNN autotuning, ``torch.compile``), the following ones are timed with
the engine's own ``train/iters_per_s``, which covers data loading, forward, backward and
both optimizers and excludes the evaluations (the engine syncs with the device before it
reads the clock).
"""

from __future__ import annotations

import copy
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch

from search.analysis.estimate import StepCost
from search.errors import LicSearchError
from trainables import metrics as M
from trainables.config import TrialConfig

__all__ = ["device_label", "TimedRun", "timed_run", "seconds_per_iteration", "step_cost", "timing_order",
           "launch_seconds", "worker_import_seconds", "search_overhead_seconds", "probe_space"]


def device_label(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 2 threads)``: what the timings were taken on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


@dataclass
class TimedRun:
    """A short real training run: its seconds per iteration, the trainer and every evaluation."""

    seconds_per_iteration: float
    trainer: Any
    results: list[dict[str, float]]


def timed_run(config: dict, steps: int = 30, warmup: int = 10, data: Optional[Path] = None,
              device: Optional[torch.device] = None, before_train: Optional[Callable[[], None]] = None,
              eval_images: int = 1) -> TimedRun:
    """Train ``config`` (a plain trial dict) for ``warmup`` + at least ``steps`` iterations
    (rounded up to whole intervals of ``warmup``), evaluating every ``warmup`` on ``eval_images`` image(s).

    ``data``: train (and evaluate) on this image folder instead of the config's; the step
    time depends on crop and batch size, not on which images are cropped. ``before_train``
    runs after the model and optimizers are built, just before the first step (a barrier
    for trials started together).
    """
    from trainables.training.engine import Trainer

    plain = copy.deepcopy(config)
    schedule = plain.setdefault("schedule", {})
    intervals = max(1, math.ceil(steps / warmup))
    schedule.update(iterations=warmup * (1 + intervals), eval_every=warmup, warmup=0)
    plain.setdefault("data", {})["max_eval_images"] = eval_images
    if data is not None:
        plain["data"]["train"] = str(data)
        plain["data"]["eval"] = str(data)
    trainer = Trainer(TrialConfig.model_validate(plain), device=device)
    if before_train is not None:
        before_train()
    results = list(trainer.train())
    # Total time over total steps: the timed intervals are equally long, so the mean of 1/rate.
    seconds = sum(1.0 / r[M.TRAIN_ITERS_PER_S] for r in results[1:]) / len(results[1:])
    return TimedRun(seconds, trainer, results)


def seconds_per_iteration(config: dict, steps: int = 30, warmup: int = 10, data: Optional[Path] = None,
                          device: Optional[torch.device] = None) -> float:
    """Mean seconds per iteration of the trial ``config`` over at least ``steps`` timed iterations."""
    return timed_run(config, steps, warmup, data, device).seconds_per_iteration


def step_cost(config: dict, steps: int = 30, warmup: int = 10, data: Optional[Path] = None,
              device: Optional[torch.device] = None, repeats: int = 2) -> StepCost:
    """Everything one trial of ``config`` pays, each part measured with the real engine:

    * per iteration: :func:`timed_run`;
    * per evaluation: :meth:`Trainer.evaluate` on the space's eval set (``data.eval``, its
      ``max_eval_images``; ``data`` when the space's folder is not here), plus saving the checkpoint
      the trainable writes after each evaluation (best of ``repeats``);
    * once: building a fresh trainer (model, optimizers), its training loader, the first step
      beyond a steady one, and loading the eval images (what a trial does before it runs at speed).
    """
    from trainables.data.images import load_eval_images, make_train_loader
    from trainables.training.checkpoint import save_checkpoint
    from trainables.training.engine import Trainer

    per_iteration = timed_run(config, steps, warmup, data, device).seconds_per_iteration
    plain = copy.deepcopy(config)
    if data is not None:
        plain.setdefault("data", {})["train"] = str(data)
        if not Path(str(plain["data"].get("eval", ""))).is_dir():
            plain["data"]["eval"] = str(data)
    trial = TrialConfig.model_validate(plain)
    started = time.perf_counter()
    trainer = Trainer(trial, device=device)
    loader = make_train_loader(trial.data, seed=trial.schedule.seed, device_type=trainer.device.type,
                               iterations=trial.schedule.iterations)
    trainer._step(next(iter(loader)).to(trainer.device))
    trainer._eval_images = load_eval_images(trial.data)
    startup = max(0.0, time.perf_counter() - started - per_iteration)
    evaluation = min(_timed(trainer.evaluate) for _ in range(repeats))
    with tempfile.TemporaryDirectory(prefix="lic-estimate-") as folder:
        checkpoint = min(_timed(lambda: save_checkpoint(trainer.state_dict(), Path(folder))) for _ in range(repeats))
    return StepCost(per_iteration, evaluation + checkpoint, startup)


Key = TypeVar("Key")


def timing_order(keys: Sequence[Key], rounds: int) -> list[tuple[int, Key]]:
    """``(round, key)`` pairs in the order to time them: every key once per round, every other round reversed and
    the last one in ``keys``' order (two rounds: C B A, then A B C), so the keys finish in order.

    Why: a machine's speed drifts over the minutes an estimate takes (clock boost, thermal limits, other jobs on
    the node). Timed one after another, the first configuration and the last see different machines (on an
    idle 2-core CPU the estimates ran 1.24 -> 0.80 of direct timings from first to last). Mirrored rounds give
    every key the same mean moment, so a linear drift cancels exactly for an even number of rounds.
    """
    order: list[tuple[int, Key]] = []
    for index in range(rounds):
        forward = (rounds - 1 - index) % 2 == 0
        order.extend((index, key) for key in (keys if forward else list(reversed(keys))))
    return order


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def launch_seconds(run: "Callable[[Path, Path, str], object]") -> tuple[float, float]:
    """(worker, around): seconds a fresh Python process spends importing the trainable (what each Ray worker
    does inside its first trial's time), and seconds a search spends around its trials (see
    :func:`search_overhead_seconds`; ``run`` is the code ``lic-search run`` runs)."""
    return worker_import_seconds(), search_overhead_seconds(run)


def worker_import_seconds() -> float:
    """Seconds a fresh Python process spends importing the trainable, measured in a child process so that
    this one's warm imports do not hide them."""
    code = ("import time; t = time.perf_counter(); import trainables.training.trainable, ray; "
            "print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_child_env())
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise LicSearchError(f"estimate: importing the trainable in a fresh process failed: "
                             f"{done.stderr.strip()[-500:]}") from None


def _child_env() -> dict[str, str]:
    """This environment, with this process's copy of lic-search first on the path (a checkout run without
    installing it is timed as itself)."""
    import os

    root = str(Path(__file__).resolve().parents[2])  # the folder holding the search package
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


PROBE_NAME = "lic-estimate-probe"


def probe_space(images: Path) -> dict:
    """A one-trial search of one iteration on a tiny model: all it costs beyond its trial is the search's own."""
    return {
        "name": PROBE_NAME,
        "trial": {"model": {"backbone": "mbt2018-mean", "N": 8, "M": 8},
                  "data": {"train": str(images), "eval": str(images), "crop_size": 64, "batch_size": 1,
                           "num_workers": 0},
                  "loss": {"lmbda": 0.013},
                  "schedule": {"iterations": 1, "eval_every": 1, "seed": 0}},
        "scheduler": {"type": "fifo"},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "max_failures": 0},
    }


def search_overhead_seconds(run: "Callable[[Path, Path, str], object]") -> float:
    """Seconds a search spends around its trials, measured in this process through ``run(space, storage_path,
    tracking_uri)``, the code ``lic-search run`` runs (``search.tuning.tuner.run_search``, passed in by the command:
    analysis sits below tuning), on a one-trial, one-iteration search: validation, Ray's start, the experiment
    folder and training index, the parent MLflow run in a fresh SQLite store, the end-of-search summary, Ray's
    shutdown, less that trial's own time (which Ray records in its ``result.json``). The driver's imports are
    warm here; a fresh worker's are :func:`worker_import_seconds`."""
    import contextlib
    import io

    import numpy
    import yaml
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="lic-estimate-probe-") as folder:
        root = Path(folder)
        images = root / "images"
        images.mkdir()
        noise = numpy.random.default_rng(0)
        for index in range(2):
            Image.fromarray(noise.integers(0, 256, (64, 64, 3), dtype=numpy.uint8)).save(images / f"{index}.png")
        space = root / "probe.yaml"
        space.write_text(yaml.safe_dump(probe_space(images), sort_keys=False))
        console = io.StringIO()  # the probe's console (its trial line and summary) is not estimate's
        started = time.perf_counter()
        failure: Optional[BaseException] = None
        try:
            with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                run(space, root / "results", f"sqlite:///{root / 'mlflow.db'}")
        except Exception as error:  # noqa: BLE001 - said with the probe's output below
            failure = error
        wall = time.perf_counter() - started
        results = sorted((root / "results" / PROBE_NAME).glob("*/result.json"))
        if failure is not None or not results:
            raise LicSearchError(f"estimate: the one-trial search that times a search's launch failed "
                                 f"({failure or 'no trial result'}); pass --launch S to skip it. Its output ended: "
                                 f"{console.getvalue().strip()[-800:]}")
        trial = max(json.loads(line).get("time_total_s", 0.0)
                    for line in results[0].read_text().splitlines() if line.strip())
        return max(0.0, wall - trial)
