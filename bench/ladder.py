"""A rate family from scratch vs as a ladder (issue 20): total iterations and each rate point's final R-D loss.

From scratch, every λ of the family trains ``--iterations``. As a ladder, the anchor (the
largest λ, as CompressAI trained its zoo) trains the same budget from scratch, and every other
λ starts from the anchor's final weights (``model.init_from``) for ``--fine-tune`` iterations
at ``--fine-tune-lr``. Both use the platform's own training engine and checkpoints, on the
shipped sample crops, in one process (Ray adds nothing to the training being compared).
Reported per rate point: the final eval R-D loss of the ladder / from scratch (issue target:
within 2% at no more than 40% of the iterations).

    python bench/ladder.py --iterations 1000 --fine-tune 200 --output bench/results/ladder_cpu.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import command_line  # noqa: E402

from trainables import metrics as M  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.training.checkpoint import save_checkpoint  # noqa: E402
from trainables.training.engine import Trainer  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "kodak-crops"
LAMBDAS = (0.0067, 0.013, 0.025, 0.0483)


def trial(lmbda: float, iterations: int, lr: float, init_from: Optional[str] = None) -> dict:
    return {
        "model": {"backbone": "mbt2018-mean", "N": 16, "M": 24, "init_from": init_from},
        "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64, "batch_size": 4,
                 "num_workers": 0},
        "loss": {"lmbda": lmbda},
        "schedule": {"iterations": iterations, "eval_every": iterations, "lr": lr, "milestones": [0.9], "seed": 0},
    }


def train(config: dict, keep: Optional[Path] = None) -> tuple[dict, float]:
    """Final evaluation and seconds of one trial (its final checkpoint saved into ``keep``)."""
    started = time.perf_counter()
    trainer = Trainer(TrialConfig.model_validate(config))
    result = {}
    for result in trainer.train():
        pass
    if keep is not None:
        save_checkpoint(trainer.state_dict(), keep)
    return result, time.perf_counter() - started


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000, help="from-scratch budget per rate point")
    parser.add_argument("--fine-tune", type=int, default=200, help="fine-tune budget per other rate point")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--fine-tune-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="write the table (markdown) here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    anchor = max(LAMBDAS)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = {lmbda: train(trial(lmbda, args.iterations, args.lr),
                                Path(folder) / "anchor" if lmbda == anchor else None) for lmbda in LAMBDAS}
        for lmbda in LAMBDAS:
            print(f"from scratch λ={lmbda}: {scratch[lmbda][0][M.EVAL_RD_LOSS]:.4f}", flush=True)
        ladder = {anchor: scratch[anchor]}  # the anchor is the same from-scratch trial in both
        for lmbda in LAMBDAS:
            if lmbda != anchor:
                ladder[lmbda] = train(trial(lmbda, args.fine_tune, args.fine_tune_lr, str(Path(folder) / "anchor")))
                print(f"ladder λ={lmbda}: {ladder[lmbda][0][M.EVAL_RD_LOSS]:.4f}", flush=True)
    for lmbda in LAMBDAS:
        s, l = scratch[lmbda][0], ladder[lmbda][0]
        rows.append((lmbda, "anchor" if lmbda == anchor else "fine-tuned",
                     args.iterations, args.iterations if lmbda == anchor else args.fine_tune,
                     s[M.EVAL_RD_LOSS], l[M.EVAL_RD_LOSS], l[M.EVAL_RD_LOSS] / s[M.EVAL_RD_LOSS],
                     s[M.EVAL_BPP], l[M.EVAL_BPP], s[M.EVAL_PSNR], l[M.EVAL_PSNR]))
    total_scratch = args.iterations * len(LAMBDAS)
    total_ladder = args.iterations + args.fine_tune * (len(LAMBDAS) - 1)
    seconds_scratch = sum(t for _, t in scratch.values())
    seconds_ladder = sum(t for _, t in ladder.values())
    lines = [
        f"# Rate family from scratch vs as a ladder (CPU, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), torch {torch.__version__})", "",
        f"Command: `{command_line('bench/ladder.py', argv)}`", "",
        "mbt2018-mean N=16 M=24, batch 4 of 64x64 crops of the shipped samples (32 images), eval on the 4 "
        f"shipped eval crops; from scratch lr {args.lr:g}, fine-tune lr {args.fine_tune_lr:g}, ×0.1 at 90% of "
        "each budget; the anchor (largest λ) is the same trial in both.", "",
        "| λ | ladder | iterations (scratch) | iterations (ladder) | R-D loss scratch | R-D loss ladder | "
        "ladder / scratch | bpp scratch | bpp ladder | PSNR scratch | PSNR ladder |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r[0]:g} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.4f} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.4f} | "
          f"{r[8]:.4f} | {r[9]:.2f} | {r[10]:.2f} |" for r in rows], "",
        f"Total iterations: scratch {total_scratch}, ladder {total_ladder} "
        f"({total_ladder / total_scratch:.0%}); fine-tune budget {args.fine_tune / args.iterations:.0%} of the "
        f"from-scratch budget. Wall time: scratch {seconds_scratch:.0f} s, ladder {seconds_ladder:.0f} s "
        f"({seconds_ladder / seconds_scratch:.0%}).",
        f"Worst ratio over the fine-tuned rate points: {max(r[6] for r in rows if r[1] != 'anchor'):.4f} "
        "(target: within 2%, i.e. ≤ 1.02).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
