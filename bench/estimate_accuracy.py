"""Does `lic-search estimate` predict what a search costs? A scaled-down Figure 8(a), run for real.

Target (issue 24): the estimate within ±15 % of the measured CPU-hours and wall time. The space is
the components ablation at CPU scale: the baseline, full WLS and A2 (labelled variants) × 4 MSE λ on
mbt2018-mean N=16/M=24, 64×64 crops, 400 iterations, lr 1e-3, evaluated every 100 iterations on 8
256×256 Kodak crops (from ../shared/data/kodak; the shipped sample crops when it is absent), two
trials at a time on one CPU each. The script writes the space, runs `lic-search estimate`, then
`lic-search run` (wall time measured around the command), reads the measured CPU-hours from
`lic-search status --json` (trial seconds × CPUs per trial, what the progress view reports) and
prints a Markdown table for ``bench/results/estimate_accuracy_cpu.md``.

    nice -n 5 python bench/estimate_accuracy.py [--iterations 400] [--out /tmp/estimate-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"
SAMPLES = REPO / "samples" / "kodak-crops"
LAMBDAS = [0.0035, 0.0067, 0.013, 0.025]


def eval_crops(folder: Path, count: int = 8, size: int = 256) -> tuple[Path, str]:
    """``count`` centre crops of Kodak images, ``size`` pixels square (the issue's evaluation set)."""
    if not KODAK.is_dir():
        return SAMPLES / "eval", f"the shipped sample crops ({SAMPLES / 'eval'}; ../shared/data/kodak absent)"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(KODAK.glob("*.png"))[:count]:
        with Image.open(path) as image:
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image.convert("RGB").crop((left, top, left + size, top + size)).save(folder / path.name)
    return folder, f"{count} centre crops {size}×{size} of Kodak"


def write_space(out: Path, iterations: int, eval_folder: Path) -> Path:
    space = {
        "name": "bench-estimate-fig8a",
        "description": "Scaled-down Figure 8(a) for bench/estimate_accuracy.py",
        "trial": {
            "model": {"backbone": "mbt2018-mean", "N": 16, "M": 24, "auxt": {"grid": [
                {"label": "baseline", "enabled": False},
                {"label": "full WLS", "enabled": True},
                {"label": "A2 no scaling", "enabled": True, "scaling": False}]}},
            "data": {"train": str(SAMPLES / "train"), "eval": str(eval_folder), "crop_size": 64, "batch_size": 8,
                     "num_workers": 0},
            "loss": {"distortion": "mse", "lmbda": {"grid": LAMBDAS}},
            "schedule": {"iterations": iterations, "milestones": [0.916667], "lr": 0.001, "eval_every": 100,
                         "seed": 0},
        },
        "search": {"algorithm": "random", "num_samples": 1, "max_concurrent": 2, "seed": 0,
                   "baseline": {"label": "baseline"}},
        "scheduler": {"type": "fifo"},
        "resources": {"cpus_per_trial": 1, "max_failures": 0},
    }
    path = out / "fig8a_cpu.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False, allow_unicode=True))
    return path


def _available_gib() -> float:
    """MemAvailable from /proc/meminfo (a shared machine's other work shows here), GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def hours(text: str) -> float:
    """``0.117 h (7.02 min)`` / ``1.5 h`` / ``12 h`` -> hours."""
    return float(re.match(r"([\d.,]+) ", text.strip()).group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("/tmp/lic-estimate-bench"))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    eval_folder, eval_text = eval_crops(out / "eval")
    space = write_space(out, args.iterations, eval_folder)

    started = time.perf_counter()
    estimated = subprocess.run(cli("estimate", str(space)), env=env, capture_output=True, text=True, cwd=out)
    estimate_seconds = time.perf_counter() - started
    print(estimated.stdout, estimated.stderr[-2000:], sep="\n", file=sys.stderr)
    grid = re.search(r"^grid \(every trial its full budget\): [\d,]+ iterations, (.+)$", estimated.stdout, re.M)
    wall = re.search(r"wall time on .*: grid (.+?)(?:, ASHA|$)", estimated.stdout, re.M)
    predicted_hours, predicted_wall = hours(grid.group(1)), hours(wall.group(1))

    load = os.getloadavg()
    started = time.perf_counter()
    ran = subprocess.run(cli("run", str(space), "--storage-path", str(out / "results"),
                             "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"),
                         env=env, capture_output=True, text=True, cwd=out)
    measured_wall = (time.perf_counter() - started) / 3600.0
    print(ran.stdout[-3000:], ran.stderr[-2000:], sep="\n", file=sys.stderr)
    if ran.returncode != 0:
        print(f"lic-search run failed (exit {ran.returncode}) after {measured_wall * 60:.1f} min; no measurement. "
              f"Load average before it: {load[0]:.2f}; memory available: {_available_gib():.1f} GiB")
        return 1
    status = subprocess.run(cli("status", str(out / "results" / "bench-estimate-fig8a"), "--json",
                                "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"),
                            env=env, capture_output=True, text=True, cwd=out)
    view = json.loads(status.stdout)
    measured_hours = view["device_hours"]
    completed = view["counts"].get("completed", 0)

    rows = [("CPU-hours (trial time × CPUs per trial)", predicted_hours, measured_hours),
            ("wall time (h)", predicted_wall, measured_wall)]
    print(f"Space: {space.name} (written by the script): baseline, full WLS, A2 × λ {LAMBDAS}, mbt2018-mean "
          f"N=16 M=24, crops 64, batch 8, {args.iterations} iterations, eval every 100 on {eval_text}, "
          f"2 trials at a time, 1 CPU each; {completed} of {len(view['trials'])} trials completed.")
    print(f"Load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; the "
          f"estimate itself took {estimate_seconds:.0f} s (its timings are taken under whatever else runs then).\n")
    print("| quantity | estimate | measured | estimate ÷ measured | within ±15 % |")
    print("|---|---|---|---|---|")
    for name, predicted, measured in rows:
        ratio = predicted / measured
        within = "yes" if abs(ratio - 1) <= 0.15 else "no"
        print(f"| {name} | {predicted:.4f} | {measured:.4f} | {ratio:.3f} | {within} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
