"""What a job's end costs: seconds from the end-of-job signal to the driver's exit, and iterations lost per trial.

Runs ``lic-search run SPACE --resume-if-exists`` as a batch job would, ``--rounds`` times: each round waits
until every running trial has reported in this round and trained ``--delay`` seconds more (mid-way between
evaluations), sends ``--signal`` to the driver (Slurm's ``--signal=B:TERM@120`` does the same), and times the
driver's exit (expected: code 75, "requeue me"). Per trial and stop, from Ray's result.json: the iteration
of the checkpoint taken after the signal, the evaluation checkpoint before it (where a plain kill would have
sent the trial back), and where the next round's attempt started (``restored_at``): iterations lost are
the difference between the last iteration the stopped attempt reported and where the next one restarted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from _timing import REPO, command_line

from trainables import metrics as M

EXIT_REQUEUE = 75


def results(experiment: Path) -> dict[str, list[dict]]:
    found = {}
    for file in experiment.glob("*/result.json"):
        lines = []
        for line in file.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        if lines:
            found[lines[0]["trial_id"]] = lines
    return found


def one_round(command: list[str], experiment: Path, log: Path, delay: float, signal_name: str) -> dict:
    seen = {t: len(r) for t, r in results(experiment).items()} if experiment.is_dir() else {}
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline:  # the running trials (those with a result after the last stop) reported
            fresh = [t for t, r in (results(experiment).items() if experiment.is_dir() else [])
                     if len(r) > seen.get(t, 0) and not M.is_notice(r[-1])]
            if fresh:
                break
            if driver.poll() is not None:
                return {"exit": driver.returncode, "finished": True}
            time.sleep(0.2)
        time.sleep(delay)
        sent = time.monotonic()
        driver.send_signal(getattr(signal, signal_name))
        code = driver.wait(timeout=600)
        return {"exit": code, "seconds": time.monotonic() - sent, "finished": False}
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)


def stops(experiment: Path) -> list[dict]:
    """Per trial, each stopped attempt: its notice checkpoint, the evaluation before, where the next started."""
    rows = []
    for trial, lines in results(experiment).items():
        for index, line in enumerate(lines):
            if line.get(M.NOTICE) != M.NOTICE_PREEMPTED:
                continue
            before = [r[M.ITERATIONS] for r in lines[:index] if not M.is_notice(r)]
            after = next((r for r in lines[index + 1:] if M.RESTORED_AT in r), None)
            rows.append({"trial": trial, "checkpoint": line[M.ITERATIONS], "evaluation_before": max(before, default=0),
                         "restarted_at": after[M.RESTORED_AT] if after else None,
                         "lost": line[M.ITERATIONS] - after[M.RESTORED_AT] if after else None})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="jobs stopped by the signal")
    parser.add_argument("--delay", type=float, default=5.0, help="seconds of training after the trials reported")
    parser.add_argument("--signal", default="SIGTERM", choices=("SIGTERM", "SIGUSR1", "SIGUSR2"))
    parser.add_argument("--finish", action="store_true", help="then run the search to its end (one more job)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="job_end_"))
    command = [sys.executable, "-m", "search.cli", "run", str(args.space.resolve()), "--storage-path",
               str(work / "results"), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--resume-if-exists"]
    experiment = work / "results" / args.space.stem
    timings = []
    for index in range(args.rounds):
        outcome = one_round(command, experiment, work / f"job{index + 1}.log", args.delay, args.signal)
        print(f"job {index + 1}: {outcome}", flush=True)
        if outcome["finished"]:
            break
        assert outcome["exit"] == EXIT_REQUEUE, (work / f"job{index + 1}.log").read_text()[-3000:]
        timings.append(outcome["seconds"])
    last = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}) \
        if args.finish else None
    rows = stops(experiment)
    lines = [f"# Job end: signal to driver exit, iterations lost (CPU, {os.cpu_count()} cores, shared machine)", "",
             f"Command: `{command_line('bench/job_end.py', argv)}`", "",
             f"Space {args.space.name}; {args.signal} to the driver of `lic-search run --resume-if-exists` "
             f"{args.delay:g} s after the running trials reported"
             + (f"; the last job ran to the end (exit {last.returncode})." if last else "."),
             "", "| job | signal → driver exit (s) |", "|---|---|"]
    lines += [f"| {i + 1} | {t:.1f} |" for i, t in enumerate(timings)]
    lines += ["", "| trial | checkpoint after the signal (iteration) | evaluation checkpoint before | next job "
                  "restarted at | iterations lost |", "|---|---|---|---|---|"]
    lines += [f"| {r['trial']} | {r['checkpoint']} | {r['evaluation_before']} | {r['restarted_at']} | {r['lost']} |"
              for r in rows]
    if timings:
        lines += ["", f"Slowest exit: {max(timings):.1f} s (Slurm's default warning: 120 s). Iterations a plain kill "
                      f"would have lost (back to the evaluation checkpoint): "
                      f"{', '.join(str(r['checkpoint'] - r['evaluation_before']) for r in rows)}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
