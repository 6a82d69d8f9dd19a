"""A rate family from scratch vs as ladders (issues 20, 34): per rate point bpp, PSNR, R-D loss and iterations.

From scratch, every λ trains ``--iterations``. Each ``--ladder ORDER:LR:WARMUP`` trains the same
family as a ladder: its start point (the largest λ for a descending order, the smallest for an
ascending one) is the from-scratch trial of that λ, and every other λ starts from the final
weights of its source (``model.init_from``) and fine-tunes at ``LR`` after ``WARMUP`` linear
warm-up iterations (constant lr after it), until the settle rule says its rate has settled
(``--settle TOL:K``, the rule of ``ladder.settle``: ``eval/bpp`` and ``eval/rd_loss`` of the last K
evaluations within TOL percent of the latest) or ``--fine-tune`` iterations, whichever is first.
Orders: ``descending``/``ascending`` fine-tune every λ from the start point; ``nearest-descending``/
``nearest-ascending`` fine-tune each λ from its neighbour already trained (a chain).

Every trial's result is kept in ``--work``/results.json and the markdown is rewritten after each
trial, so a long run reports as it goes and a rerun with the same arguments skips what is done.
Both families use the platform's own training engine and checkpoints in one process.

    python bench/ladder.py --N 64 --M 96 --lambdas 0.0035 0.013 0.0483 --iterations 3000 \\
        --ladder descending:1e-3:0 --ladder ascending:1e-3:0 --output bench/results/ladder_spread_cpu.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import command_line  # noqa: E402

from search.analysis.bdrate import MIN_SHORTER_OVERLAP, bd_rate  # noqa: E402
from search.analysis.curves import CurveError, RDCurve  # noqa: E402
from search.tuning.settle import settled  # noqa: E402
from trainables import metrics as M  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.training.checkpoint import save_checkpoint  # noqa: E402
from trainables.training.engine import Trainer  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "kodak-crops"
ORDERS = ("descending", "ascending", "nearest-descending", "nearest-ascending")


def trial(args, lmbda: float, iterations: int, lr: float, warmup: int = 0, eval_every: Optional[int] = None,
          init_from: Optional[str] = None, decay: bool = True) -> dict:
    return {
        "model": {"backbone": "mbt2018-mean", "N": args.N, "M": args.M, "init_from": init_from},
        "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": args.crop,
                 "batch_size": args.batch, "num_workers": 0},
        "loss": {"lmbda": lmbda},
        "schedule": {"iterations": iterations, "eval_every": eval_every or iterations, "lr": lr,
                     "milestones": [0.9] if decay else [], "warmup": warmup, "seed": 0},
    }


def train(config: dict, keep: Path, settle: Optional[tuple[float, int]] = None) -> dict:
    """One trial to its budget (or until it settles); its final evaluation, iterations, seconds, why it ended."""
    started = time.perf_counter()
    trainer = Trainer(TrialConfig.model_validate(config))
    history, result, why = [], {}, "budget"
    for result in trainer.train():
        history.append(result)
        reason = settle and settled(history, *settle)
        if reason:
            why = reason.split(":")[0]
            break
    save_checkpoint(trainer.state_dict(), keep)
    return {"bpp": result[M.EVAL_BPP], "psnr": result[M.EVAL_PSNR], "rd_loss": result[M.EVAL_RD_LOSS],
            "iterations": trainer.iteration, "seconds": time.perf_counter() - started, "why": why,
            "curve": [(r[M.ITERATIONS], r[M.EVAL_BPP], r[M.EVAL_RD_LOSS]) for r in history]}


def ladder_sources(order: str, lambdas: Sequence[float]) -> list[tuple[float, float]]:
    """(λ, the λ it fine-tunes from) for every λ but the start point, in training order."""
    chain = sorted(lambdas, reverse=order.endswith("descending"))
    if order.startswith("nearest"):
        return list(zip(chain[1:], chain[:-1]))
    return [(lmbda, chain[0]) for lmbda in chain[1:]]


def _folder(args, key: str) -> Path:
    """Where a trial's final checkpoint is kept (its fine-tunes start from it)."""
    return args.work / key.replace(" ", "_").replace(":", "_")


def parse_ladder(text: str) -> tuple[str, float, int]:
    order, lr, warmup = (text.split(":") + ["1e-3", "0"])[:3]
    if order not in ORDERS:
        raise argparse.ArgumentTypeError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    return order, float(lr), int(warmup)


def family_bd_rate(points: dict, scratch: dict) -> str:
    """BD-rate (PSNR, pchip) of a ladder family against the from-scratch family, or why there is none."""
    def curve(name: str, family: dict) -> RDCurve:
        return RDCurve(name, [family[k]["bpp"] for k in family], [family[k]["psnr"] for k in family])
    try:
        result = bd_rate(curve("ladder", points), curve("scratch", scratch), min_points=3,
                         min_shorter_overlap=MIN_SHORTER_OVERLAP)
    except CurveError as error:
        return f"n/a ({str(error).split(': ', 1)[-1]})"
    return f"{result.bd_rate:+.1f}% (PSNR overlap {result.overlap:.0%})"


def report(args, argv, results: dict) -> str:
    lambdas = sorted(args.lambdas)
    scratch = {lm: results[f"scratch {lm:g}"] for lm in lambdas if f"scratch {lm:g}" in results}
    lines = [
        f"# Rate family from scratch vs as ladders (CPU, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), torch {torch.__version__})", "",
        f"Command: `{command_line('bench/ladder.py', argv)}`", "",
        f"mbt2018-mean N={args.N} M={args.M}, batch {args.batch} of {args.crop}x{args.crop} crops of the shipped "
        f"samples (32 images), eval on the 4 shipped eval crops. From scratch: {args.iterations} iterations at lr "
        f"{args.lr:g}, ×0.1 at 90%. Fine-tunes: at most {args.fine_tune} iterations, evaluated every "
        f"{args.eval_every}, constant lr after the warm-up, stopped by the settle rule "
        + (f"(eval/bpp and eval/rd_loss of the last {args.settle[1]} evaluations within {args.settle[0]:g}%)."
           if args.settle else "(off: fixed length)."), "",
        "## From scratch", "",
        "| λ | bpp | PSNR | R-D loss | iterations | seconds |", "|---|---|---|---|---|---|",
        *[f"| {lm:g} | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['rd_loss']:.4f} | {r['iterations']} | "
          f"{r['seconds']:.0f} |" for lm, r in scratch.items()], "",
    ]
    if len(scratch) == len(lambdas):
        bpps = [r["bpp"] for r in scratch.values()]
        lines += [f"bpp spread (max ÷ min): {max(bpps) / min(bpps):.2f}×; λ spread {max(lambdas) / min(lambdas):.1f}×.",
                  ""]
    for order, lr, warmup in args.ladder:
        name = f"{order}:{lr:g}:{warmup}"
        start = lambdas[-1] if order.endswith("descending") else lambdas[0]
        points = {start: scratch[start]} if start in scratch else {}
        points.update({lm: results[f"{name} {lm:g}"] for lm in lambdas if f"{name} {lm:g}" in results})
        sources = dict(ladder_sources(order, lambdas))
        lines += [f"## Ladder {order}, fine-tune lr {lr:g}, warm-up {warmup}", "",
                  "| λ | from | bpp scratch | bpp ladder | PSNR scratch | PSNR ladder | R-D scratch | R-D ladder | "
                  "ladder ÷ scratch | bpp ladder ÷ scratch | iterations | ended by |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for lm in lambdas:
            if lm not in points or lm not in scratch:
                continue
            s, p = scratch[lm], points[lm]
            lines.append(f"| {lm:g} | {'start' if lm == start else f'λ {sources[lm]:g}'} | {s['bpp']:.4f} | "
                         f"{p['bpp']:.4f} | {s['psnr']:.2f} | {p['psnr']:.2f} | {s['rd_loss']:.4f} | "
                         f"{p['rd_loss']:.4f} | {p['rd_loss'] / s['rd_loss']:.3f} | {p['bpp'] / s['bpp']:.2f} | "
                         f"{p['iterations']} | {'scratch' if lm == start else p['why']} |")
        lines.append("")
        if len(points) == len(lambdas) == len(scratch):
            total = sum(p["iterations"] for p in points.values())
            seconds = sum(p["seconds"] for p in points.values())
            worst = max(points[lm]["rd_loss"] / scratch[lm]["rd_loss"] for lm in lambdas if lm != start)
            bpps = [p["bpp"] for p in points.values()]
            lines += [f"Total iterations {total} of {args.iterations * len(lambdas)} from scratch "
                      f"({total / (args.iterations * len(lambdas)):.0%}); wall time {seconds:.0f} s of "
                      f"{sum(s['seconds'] for s in scratch.values()):.0f} s. Worst fine-tuned R-D ladder ÷ scratch {worst:.3f} "
                      f"(target ≤ 1.02). bpp spread {max(bpps) / min(bpps):.2f}×. BD-rate ladder vs scratch: "
                      f"{family_bd_rate(points, scratch)}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--N", type=int, default=64, help="mbt2018-mean width N")
    parser.add_argument("--M", type=int, default=96, help="mbt2018-mean latent channels M")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0035, 0.013, 0.0483])
    parser.add_argument("--iterations", type=int, default=3000, help="from-scratch budget per rate point")
    parser.add_argument("--lr", type=float, default=2e-3, help="from-scratch lr")
    parser.add_argument("--ladder", type=parse_ladder, action="append", default=None,
                        help=f"ORDER[:LR[:WARMUP]] (repeatable), ORDER one of {', '.join(ORDERS)}")
    parser.add_argument("--fine-tune", type=int, default=1500, help="fine-tune budget cap per rate point")
    parser.add_argument("--eval-every", type=int, default=100, help="fine-tune evaluation interval")
    parser.add_argument("--settle", type=lambda t: (float(t.split(":")[0]), int(t.split(":")[1])), default=None,
                        help="TOL:K settle rule (percent, evaluations); default off (fixed-length fine-tunes)")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per trial")
    parser.add_argument("--jobs", type=int, default=1, help="trials trained side by side (independent ones only)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lic-bench-ladder"),
                        help="checkpoints and results.json (reused by a rerun with the same arguments)")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown here too (after each trial)")
    args = parser.parse_args(argv)
    args.ladder = args.ladder or [("descending", 1e-3, 0)]
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}

    lambdas = sorted(args.lambdas)
    jobs = {f"scratch {lm:g}": (trial(args, lm, args.iterations, args.lr), None, None) for lm in lambdas[::-1]}
    same: dict[str, str] = {}  # a ladder's trial that another ladder trains identically (nearest's first step)
    for order, lr, warmup in args.ladder:
        name, start = f"{order}:{lr:g}:{warmup}", lambdas[-1] if order.endswith("descending") else lambdas[0]
        for lm, source in ladder_sources(order, lambdas):
            source_key = f"scratch {source:g}" if source == start else f"{name} {source:g}"
            source_key = same.get(source_key, source_key)
            job = (trial(args, lm, args.fine_tune, lr, warmup, args.eval_every, str(_folder(args, source_key)),
                         decay=False), args.settle, source_key)
            twin = next((key for key, other in jobs.items() if other == job), None)
            if twin:
                same[f"{name} {lm:g}"] = twin
            else:
                jobs[f"{name} {lm:g}"] = job

    def done(key: str, outcome: dict) -> None:
        results.update({k: outcome for k, twin in {key: key, **same}.items() if twin == key})
        store.write_text(json.dumps(results, indent=1))
        print(f"{key}: bpp {outcome['bpp']:.4f} PSNR {outcome['psnr']:.2f} R-D {outcome['rd_loss']:.4f} after "
              f"{outcome['iterations']} it ({outcome['why']}, {outcome['seconds']:.0f} s)", flush=True)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(report(args, argv, results))

    # Independent trials run side by side (--jobs processes); a fine-tune waits for its source. In file order
    # otherwise: the from-scratch family first, then each ladder as given.
    waiting = [key for key in jobs if key not in results]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(args.threads,)) as pool:
        running: dict = {}
        while waiting or running:
            for key in [k for k in waiting if jobs[k][2] is None or jobs[k][2] in results][:args.jobs - len(running)]:
                config, settle, _ = jobs[key]
                running[pool.submit(train, config, _folder(args, key), settle)] = key
                waiting.remove(key)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done(running.pop(future), future.result())
    text = report(args, argv, results)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
