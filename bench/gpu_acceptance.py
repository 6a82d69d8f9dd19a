"""GPU acceptance in one command: every issue-9 GPU figure, each measured side by side in one run.

    python bench/gpu_acceptance.py                    # on the GPU machine (<= 8 minutes on one H100)
    python bench/gpu_acceptance.py --smoke            # CPU, tiny sizes, < 3 minutes (run by the tests)

Writes ``bench/results/gpu-<device>.md`` (the command and the device in it; ``--output``
elsewhere). Sections, each with its target and PASS/FAIL:

1. AuxT step time / plain per backbone at 8x256^2 (<= 1.05)             -- bench/auxt_overhead.py
2. trainable's report-and-checkpoint path / bare loop, mbt2018-mean at 16x256^2 +- AuxT (>= 0.97).
   Ray is not installed on the GPU machine, so the trainable's per-evaluation work (result
   dict, ``trainer.state_dict()``, ``save_checkpoint`` into a temporary folder, and the copy
   of that folder into storage that ``tune.report`` makes) is timed on its own and folded in
   at the presets' ``eval_every``: rate = E / (E / engine rate + per-evaluation seconds).
   The evaluation itself is excluded (the recipe's own work, the same in any loop).
3. data loader images/s / images/s the GPU consumes (>= 2), JPEG training images
   (``--train-data``), lazily decoded (``--cache never``: an ImageNet-size set is never
   cached) with the workers a trial would get                    -- bench/dataloader_throughput.py
4. bf16 autocast, channels_last and torch.compile each against fp32 eager: speed-up, and the
   eval R-D loss after 200 identical steps (parity within 1%).
5. four trials (processes) at 0.25 GPU each, memory capped as a Ray trial caps it
   (``trainables.training.trainable.apply_resource_limits``), against one trial alone: total it/s (>= 1).
6. our engine against CompressAI's examples/train.py loop rebuilt on CompressAI's public API
   (its ImageFolder, RateDistortionLoss, the two Adam optimizers of its configure_optimizers,
   gradient clipping 1.0, the ``.item()`` logging every 10 steps), same model, batch, crop and
   workers: it/s ratio (>= 1.3).

Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import REPO, command_line, device_label, device_slug, elapsed, sync  # noqa: E402

SAMPLES = REPO / "samples" / "kodak-crops"
PRESET_EVAL_EVERY = 5000  # spaces/*.yaml: evaluation and checkpoint every 5,000 iterations
BACKBONES = ("mbt2018-mean", "elic", "tcm-small", "tcm-large")


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: the paper's on a GPU, tiny ones for ``--smoke``."""

    crop: int = 256
    auxt_batch: int = 8
    auxt_repeats: int = 20
    auxt_warmup: int = 5
    widths: dict = field(default_factory=dict)  # backbone -> (N, M); absent = the backbone's defaults
    batch: int = 16  # trainable, loader, precision and CompressAI sections (mbt2018-mean)
    steps: int = 150  # timed engine / bare-loop steps
    interval: int = 50  # engine evaluation interval (the first one warms up)
    precision_steps: int = 200
    loader_batches: int = 40
    pack_batch: int = 8
    pack_steps: int = 100
    checkpoint_repeats: int = 5


FULL = Profile()
SMOKE = Profile(crop=64, auxt_batch=1, auxt_repeats=2, auxt_warmup=1,
                widths={"mbt2018-mean": (8, 16), "elic": (16, 40), "tcm-small": (8, 20), "tcm-large": (8, 20)},
                batch=2, steps=6, interval=3, precision_steps=6, loader_batches=4, pack_batch=2, pack_steps=4,
                checkpoint_repeats=2)


@dataclass
class Section:
    title: str
    target: str
    lines: list[str]
    ratios: list[tuple[str, float, bool]]  # (what, ratio, passed)

    def markdown(self) -> str:
        verdicts = [f"- {what}: ratio **{value:.3f}** (target {self.target}): {'PASS' if ok else 'FAIL'}"
                    for what, value, ok in self.ratios]
        return "\n".join([f"## {self.title}", "", *self.lines, "", *verdicts, ""])


def _mbt(profile: Profile) -> dict:
    widths = profile.widths.get("mbt2018-mean")
    return {"backbone": "mbt2018-mean", **({"N": widths[0], "M": widths[1]} if widths else {})}


def trial_config(args, profile: Profile, *, auxt: bool = False, batch: Optional[int] = None,
                 performance: Optional[dict] = None) -> dict:
    """A plain trial config as a search would give the trainable (mbt2018-mean unless changed)."""
    return {
        "model": {**_mbt(profile), "auxt": {"enabled": auxt}},
        "data": {"train": str(args.train_data), "eval": str(args.eval_data), "crop_size": profile.crop,
                 "batch_size": batch or profile.batch, "cache": args.cache, "max_eval_images": 1},
        "loss": {"lmbda": 0.013},
        "schedule": {"iterations": 1, "lr": 1e-4, "seed": 0},
        "performance": {"device": args.device, **(performance or {})},
    }


# ----------------------------------------------------------------------------- 1. AuxT overhead
def auxt_overhead(args, profile: Profile, device: torch.device) -> Section:
    from auxt_overhead import measure

    lines = [f"Forward + R-D loss + 0.1·ortho loss + backward, {profile.auxt_batch}x3x{profile.crop}x{profile.crop}, "
             f"fp32, {profile.auxt_repeats} interleaved repeats after {profile.auxt_warmup} warm-up passes "
             "(bench/auxt_overhead.py).", "",
             "| backbone | params (M) | +AuxT (M) | time (ms) | +AuxT (ms) | ratio (median) | ratio (min) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for name in BACKBONES:
        N, M = profile.widths.get(name, (None, None))
        row = measure(name, profile.crop, profile.auxt_batch, profile.auxt_repeats, profile.auxt_warmup, device,
                      None, False, N=N, M=M)
        lines.append(f"| {name} | {row['params'] / 1e6:.2f} | {row['params_auxt'] / 1e6:.2f} | {row['time'] * 1e3:.1f} "
                     f"| {row['time_auxt'] * 1e3:.1f} | {row['ratio']:.3f} | {row['ratio_min']:.3f} |")
        ratios.append((f"{name} AuxT ÷ plain", row["ratio"], row["ratio"] <= 1.05))
        _log(f"auxt {name}: {row['ratio']:.3f}")
    return Section("1. AuxT step time ÷ plain", "≤ 1.05", lines, ratios)


# ----------------------------------------------------------------------------- 2. trainable ÷ bare loop
def per_evaluation_seconds(trainer, result: dict, repeats: int, device: torch.device) -> float:
    """What trainables/training/trainable.py does per evaluation besides evaluating, minus Ray's RPC:
    add the node id to the result, ``save_checkpoint(trainer.state_dict(), folder)`` into a
    temporary folder, and copy that folder into storage (what ``tune.report`` does with it)."""
    from trainables.metrics import NODE_ID
    from trainables.training.checkpoint import save_checkpoint

    def once() -> None:
        report = dict(result)
        report[NODE_ID] = "bench-node"
        with tempfile.TemporaryDirectory(prefix="lic-ckpt-") as folder, \
                tempfile.TemporaryDirectory(prefix="lic-storage-") as storage:
            save_checkpoint(trainer.state_dict(), Path(folder))
            shutil.copytree(folder, Path(storage) / "checkpoint_000000")

    once()  # first call pays for imports and page-cache warm-up
    return statistics.median(elapsed(once, device) for _ in range(repeats))


def trainable_vs_bare(args, profile: Profile, device: torch.device) -> tuple[Section, float]:
    from train_throughput import bare_loop

    from search.analysis.step_timing import timed_run
    from trainables.config import TrialConfig

    lines = [f"mbt2018-mean, batch {profile.batch}, {profile.crop}², {args.cache} cache. Bare loop: "
             f"bench/train_throughput.py `bare_loop`, {profile.steps} timed steps after 10. Engine: "
             f"`Trainer.train()`, its own `train/iters_per_s` over {profile.steps} steps after a {profile.interval}-step "
             f"warm-up interval. Per evaluation (no Ray on the GPU machine, so timed on its own): result dict + "
             f"`trainer.state_dict()` + `save_checkpoint` + copying the checkpoint folder into storage, folded in at "
             f"eval_every {args.eval_every}: trainable it/s = E / (E / engine it/s + per-evaluation s).", "",
             "| model | bare it/s | engine it/s | per-evaluation s | trainable it/s | engine ÷ bare | trainable ÷ bare |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    plain_rate = math.nan
    for auxt in (False, True):
        raw = trial_config(args, profile, auxt=auxt)
        config = TrialConfig.model_validate({**raw, "schedule": {**raw["schedule"], "iterations": profile.steps}})
        bare = bare_loop(config, profile.steps)
        run = timed_run(raw, steps=profile.steps, warmup=profile.interval, device=device)
        engine = 1.0 / run.seconds_per_iteration
        per_eval = per_evaluation_seconds(run.trainer, run.results[-1], profile.checkpoint_repeats, device)
        trainable = args.eval_every / (args.eval_every / engine + per_eval)
        name = "mbt2018-mean" + (" + AuxT" if auxt else "")
        lines.append(f"| {name} | {bare:.2f} | {engine:.2f} | {per_eval:.3f} | {trainable:.2f} | {engine / bare:.3f} "
                     f"| {trainable / bare:.3f} |")
        ratios.append((f"{name}: trainable ÷ bare loop", trainable / bare, trainable / bare >= 0.97))
        if not auxt:
            plain_rate = engine
        _log(f"trainable {name}: bare {bare:.2f} engine {engine:.2f} per-eval {per_eval:.3f}s")
        del run
    return Section("2. Trainable (report + checkpoint path) ÷ bare loop", "≥ 0.97", lines, ratios), plain_rate


# ----------------------------------------------------------------------------- 3. loader ÷ consumption
def loader_vs_gpu(args, profile: Profile, device: torch.device, step_rate: float) -> Section:
    from dataloader_throughput import measure

    from trainables.config import DataConfig

    raw = trial_config(args, profile)["data"]
    result = measure(DataConfig.model_validate(raw), batches=profile.loader_batches, warmup=3,
                     device_type=device.type)
    consumed = step_rate * profile.batch
    ratio = result["images_per_s"] / consumed
    lines = [f"Training loader (`make_train_loader`, {result['num_workers']} worker(s) as a trial on "
             f"{device.type} gets them, cache {args.cache}, pinned memory on CUDA) on {args.train_data}, "
             f"{profile.batch}x{profile.crop}² crops, {profile.loader_batches} batches after 3 "
             "(bench/dataloader_throughput.py), against the engine's images/s on mbt2018-mean (section 2, "
             "the cheapest backbone, so the hungriest).", "",
             "| loader img/s | workers | engine consumes img/s |", "|---:|---:|---:|",
             f"| {result['images_per_s']:.0f} | {result['num_workers']} | {consumed:.0f} |"]
    _log(f"loader {result['images_per_s']:.0f} img/s vs {consumed:.0f}")
    return Section("3. Data loader ÷ GPU consumption", "≥ 2", lines, [("loader ÷ consumption", ratio, ratio >= 2.0)])


# ----------------------------------------------------------------------------- 4. precision / layout / compile
def precision_variants(args, profile: Profile, device: torch.device) -> Section:
    from search.analysis.step_timing import timed_run
    from trainables import metrics as M

    variants = {"fp32 eager": {}, "bf16 autocast": {"amp": "bf16"}, "channels_last": {"channels_last": True},
                "torch.compile": {"compile": True}}
    warmup = profile.interval
    timed = profile.precision_steps - warmup
    rows = {}
    for name, performance in variants.items():
        run = timed_run(trial_config(args, profile, performance=performance), steps=timed, warmup=warmup,
                        device=device, eval_images=2)
        last = run.results[-1]
        rows[name] = (1.0 / run.seconds_per_iteration, last[M.EVAL_RD_LOSS], last[M.TRAIN_LOSS], last[M.ITERATIONS])
        _log(f"precision {name}: {rows[name][0]:.2f} it/s, eval loss {rows[name][1]:.5f}")
        del run
    base_rate, base_loss = rows["fp32 eager"][:2]
    lines = [f"mbt2018-mean, batch {profile.batch}, {profile.crop}², seed 0: the same initial weights and batches "
             f"for every variant; {profile.precision_steps} steps each (the first {warmup} untimed). Loss: "
             "eval R-D loss (fp32 evaluation on 2 eval images) after the last step; train loss: mean of the "
             "last interval.", "",
             "| variant | it/s | speed-up | eval R-D loss | Δ vs fp32 | train loss | steps |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for name, (rate, loss, train, steps) in rows.items():
        delta = abs(loss - base_loss) / abs(base_loss)
        lines.append(f"| {name} | {rate:.2f} | {rate / base_rate:.3f} | {loss:.5f} | {delta * 100:.2f}% | "
                     f"{train:.5f} | {steps} |")
        if name != "fp32 eager":
            ratios.append((f"{name}: eval-loss ratio to fp32 (speed-up {rate / base_rate:.3f})", loss / base_loss,
                           delta <= 0.01))
    if device.type != "cuda":
        lines += ["", "On CPU channels_last is a no-op in the engine (it applies on CUDA only)."]
    if args.smoke:
        lines += ["torch.compile ran with TorchDynamo disabled in --smoke (Inductor needs ~3 minutes to compile "
                  "on this CPU); the code path is exercised, the numbers are eager."]
    return Section("4. bf16 autocast, channels_last, torch.compile vs fp32 eager", "loss within ±1%", lines, ratios)


# ----------------------------------------------------------------------------- 5. packed trials
def _packed_trial(config: dict, share: float, cpus: int, steps: int, interval: int, barrier, queue) -> None:
    """One trial process: the trainable's resource limits, then the engine (child of :func:`packing`)."""
    try:
        from search.analysis.step_timing import timed_run
        from trainables.training.trainable import apply_resource_limits

        apply_resource_limits({"CPU": float(cpus), "GPU": share})
        run = timed_run(config, steps=steps, warmup=interval, before_train=lambda: barrier.wait(timeout=600))
        queue.put(1.0 / run.seconds_per_iteration)
    except BaseException as error:  # report instead of hanging the parent
        barrier.abort()
        queue.put(f"{type(error).__name__}: {error}")


def _run_trials(count: int, share: float, config: dict, cpus: int, profile: Profile) -> list[float]:
    context = mp.get_context("spawn")  # a fresh CUDA context per process, as in Ray's workers
    barrier, queue = context.Barrier(count), context.Queue()
    processes = [context.Process(target=_packed_trial, args=(config, share, cpus, profile.pack_steps,
                                                            profile.interval, barrier, queue))
                 for _ in range(count)]
    for process in processes:
        process.start()
    rates = [queue.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    failed = [r for r in rates if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"a packed trial failed: {failed[0]}")
    return rates


def packing(args, profile: Profile, device: torch.device) -> Section:
    config = trial_config(args, profile, batch=profile.pack_batch)
    cpus = max(1, min(4, (os.cpu_count() or 4) // 4))
    alone = _run_trials(1, 1.0, config, cpus, profile)
    packed = _run_trials(4, 0.25, config, cpus, profile)
    ratio = sum(packed) / alone[0]
    lines = [f"mbt2018-mean, batch {profile.pack_batch}, {profile.crop}², {profile.pack_steps} timed steps per "
             f"trial; each trial a separate process with {cpus} CPU thread(s), started together behind a barrier; "
             "the packed ones capped to 0.25 of the GPU memory by `apply_resource_limits` "
             "(torch.cuda.set_per_process_memory_fraction), as Ray trials with gpus_per_trial 0.25 are.", "",
             "| setting | per-trial it/s | total it/s |", "|---|---|---:|",
             f"| one trial alone | {alone[0]:.2f} | {alone[0]:.2f} |",
             f"| four trials at 0.25 GPU | {', '.join(f'{r:.2f}' for r in packed)} | {sum(packed):.2f} |"]
    _log(f"packing alone {alone[0]:.2f} packed {sum(packed):.2f}")
    return Section("5. Four trials at 0.25 GPU ÷ one trial alone (total it/s)", "≥ 1", lines,
                   [("total it/s packed ÷ alone", ratio, ratio >= 1.0)])


# ----------------------------------------------------------------------------- 6. CompressAI's loop
def compressai_loop_rate(args, profile: Profile, device: torch.device, workers: int, steps: int,
                         warmup: int = 10) -> float:
    """it/s of CompressAI's examples/train.py training loop, rebuilt on CompressAI's public API."""
    from compressai.datasets import ImageFolder
    from compressai.losses import RateDistortionLoss
    from compressai.models import MeanScaleHyperprior
    from torch.utils.data import DataLoader
    from torchvision import transforms

    torch.manual_seed(0)
    widths = _mbt(profile)
    net = MeanScaleHyperprior(N=widths.get("N", 128), M=widths.get("M", 192)).to(device)
    # configure_optimizers(): Adam on the parameters not ending in .quantiles, Adam(1e-3) on those.
    params = dict(net.named_parameters())
    main = sorted(n for n, p in params.items() if not n.endswith(".quantiles") and p.requires_grad)
    aux = sorted(n for n, p in params.items() if n.endswith(".quantiles") and p.requires_grad)
    optimizer = torch.optim.Adam((params[n] for n in main), lr=1e-4)
    aux_optimizer = torch.optim.Adam((params[n] for n in aux), lr=1e-3)
    criterion = RateDistortionLoss(lmbda=0.013)
    with tempfile.TemporaryDirectory(prefix="compressai-root-") as root:
        os.symlink(Path(args.train_data).resolve(), Path(root) / "train")  # ImageFolder wants root/train/
        # pad_if_needed: the shipped sample crops are smaller than 256; a no-op on ImageNet-size images.
        crop = transforms.Compose([transforms.RandomCrop(profile.crop, pad_if_needed=True, padding_mode="reflect"),
                                   transforms.ToTensor()])
        dataset = ImageFolder(root, split="train", transform=crop)
        loader = DataLoader(dataset, batch_size=profile.batch, num_workers=workers, shuffle=True,
                            pin_memory=device.type == "cuda", drop_last=True)
        net.train()
        done, started = 0, 0.0
        while done < warmup + steps:
            for i, d in enumerate(loader):
                if done == warmup:
                    sync(device)
                    started = time.perf_counter()
                if done == warmup + steps:
                    break
                d = d.to(device)
                optimizer.zero_grad()
                aux_optimizer.zero_grad()
                out_net = net(d)
                out_criterion = criterion(out_net, d)
                out_criterion["loss"].backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
                aux_loss = net.aux_loss()
                aux_loss.backward()
                aux_optimizer.step()
                if i % 10 == 0:  # the example's progress print: four host syncs
                    _ = (out_criterion["loss"].item(), out_criterion["mse_loss"].item(),
                         out_criterion["bpp_loss"].item(), aux_loss.item())
                done += 1
        sync(device)
        return steps / (time.perf_counter() - started)


def engine_vs_compressai(args, profile: Profile, device: torch.device) -> Section:
    from search.analysis.step_timing import timed_run
    from trainables.config import DataConfig
    from trainables.data.images import resolve_num_workers

    raw = trial_config(args, profile)
    workers = resolve_num_workers(DataConfig.model_validate(raw["data"]), device.type)
    ours = 1.0 / timed_run(raw, steps=profile.steps, warmup=profile.interval, device=device).seconds_per_iteration
    theirs = compressai_loop_rate(args, profile, device, workers, profile.steps)
    lines = [f"mbt2018-mean (CompressAI's MeanScaleHyperprior in its loop), batch {profile.batch}, {profile.crop}² "
             f"crops of {args.train_data}, {workers} loader worker(s) each, {profile.steps} timed steps. Ours: the "
             f"engine with its defaults (cache {args.cache}, TF32 on CUDA). Theirs: examples/train.py's "
             "train_one_epoch on compressai.datasets.ImageFolder + RandomCrop/ToTensor, "
             "compressai.losses.RateDistortionLoss, configure_optimizers' two Adams, clip 1.0.", "",
             "| loop | it/s |", "|---|---:|", f"| lic-search engine | {ours:.2f} |",
             f"| CompressAI examples/train.py | {theirs:.2f} |"]
    _log(f"engine {ours:.2f} vs compressai {theirs:.2f}")
    return Section("6. Our engine ÷ CompressAI's examples/train.py loop", "≥ 1.3", lines,
                   [("engine ÷ CompressAI loop", ours / theirs, ours / theirs >= 1.3)])


# ----------------------------------------------------------------------------- driver
_STARTED = time.perf_counter()


def _log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", flush=True)


SECTIONS: dict[str, Callable[..., Any]] = {
    "auxt": auxt_overhead, "trainable": trainable_vs_bare, "loader": loader_vs_gpu, "precision": precision_variants,
    "packing": packing, "compressai": engine_vs_compressai,
}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, one thread: checks the code paths")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="default: cuda when present (cpu with --smoke)")
    parser.add_argument("--train-data", type=Path, default=SAMPLES / "train",
                        help="training images, JPEGs for the loader figure (default: the shipped sample crops)")
    parser.add_argument("--eval-data", type=Path, default=SAMPLES / "eval")
    parser.add_argument("--cache", choices=("auto", "always", "never"), default="never",
                        help="decoded-image cache of the training loader (default never: as on ImageNet)")
    parser.add_argument("--eval-every", type=int, default=PRESET_EVAL_EVERY,
                        help="evaluation interval the trainable's per-evaluation work is folded in at")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/gpu-<device>.md")
    args = parser.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    if args.device is None:
        args.device = "cpu" if args.smoke else "auto"
    from trainables.device import resolve_device

    device = resolve_device(args.device)
    args.device = device.type
    if args.smoke:
        torch.set_num_threads(1)
        import torch._dynamo as dynamo

        dynamo.config.disable = True  # see section 4: Inductor on CPU takes minutes
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    chosen = args.only or list(SECTIONS)
    sections: list[Section] = []
    step_rate = math.nan
    for key in SECTIONS:
        if key not in chosen:
            continue
        _log(f"section {key}")
        if key == "trainable":
            section, step_rate = trainable_vs_bare(args, profile, device)
        elif key == "loader":
            if math.isnan(step_rate):
                _, step_rate = trainable_vs_bare(args, profile, device)
            section = loader_vs_gpu(args, profile, device, step_rate)
        else:
            section = SECTIONS[key](args, profile, device)
        sections.append(section)
    total = time.perf_counter() - _STARTED
    verdicts = [ok for s in sections for _, _, ok in s.ratios]
    report = "\n".join([
        f"# GPU acceptance ({'smoke, CPU' if args.smoke else device.type.upper()})", "",
        f"Command: `{command_line('bench/gpu_acceptance.py', argv)}`", "",
        f"Device: {device_label(device)}; torch {torch.__version__}; CPUs {os.cpu_count()}; "
        f"run time {total:.0f} s; {sum(verdicts)} of {len(verdicts)} checks pass.", "",
        *(s.markdown() for s in sections),
    ])
    output = args.output or REPO / "bench" / "results" / f"gpu-{device_slug(device)}{'-smoke' if args.smoke else ''}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print("\n" + report)
    _log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
