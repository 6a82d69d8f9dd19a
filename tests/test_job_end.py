"""A search that outlives its jobs: `run --resume-if-exists` starts, continues or reports a finished search;
a job-end signal (SIGUSR1, SIGTERM) to the driver checkpoints every running trial at its next iteration and
exits 75 (requeue me); exit codes say what happened, and no resume is suggested that cannot help."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from search.commands._shared import EXIT_ERRORED_TRIALS, EXIT_FINISHED, EXIT_REFUSED, EXIT_REQUEUE
from search.tracking import names as T
from search.tracking.client import client_for
from tests.test_faults_and_clusters import (
    LIC_SEARCH,
    _alive,
    kill_session,
    ray_instance_of,
    start,
    trial_runs,
    wait_for,
)
from tests.test_search_e2e import write_space
from trainables import metrics as M

pytestmark = pytest.mark.slow


def attempts(experiment: Path) -> dict[str, list[list[dict]]]:
    """Per trial, its results (result.json lines) split into attempts: a new attempt starts where a result carries
    ``restored_at`` for the first time or with another value than the one before."""
    found = {}
    for result_file in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        split: list[list[dict]] = []
        for line in lines:
            if not split or line.get(M.RESTORED_AT) != split[-1][-1].get(M.RESTORED_AT):
                split.append([])
            split[-1].append(line)
        found[lines[0]["trial_id"]] = split
    return found


def newest_checkpoints(experiment: Path) -> dict[str, int]:
    return {folder.name: max(int(p.name.split("_")[-1]) for p in folder.glob("checkpoint_*"))
            for folder in experiment.iterdir() if folder.is_dir() and any(folder.glob("checkpoint_*"))}


def stop_with(signal_number: int, command: list[str], log: Path, experiment: Path, uri: str, name: str) -> float:
    """Start the job, send ``signal_number`` to its driver once both trials trained past a checkpoint and their
    next one is far away; return the seconds from the signal to the driver's exit (asserted to be 75)."""
    before = newest_checkpoints(experiment) if experiment.is_dir() else {}
    driver = start(command, log)
    try:
        def trained_on() -> bool:  # both trials running, each past a checkpoint of this job
            runs = trial_runs(uri, name)
            now = newest_checkpoints(experiment) if experiment.is_dir() else {}
            return (len(runs) == 2 and len(now) == 2 and all(now[t] > before.get(t, -1) for t in now)
                    and all(r.data.tags.get(T.TAG_STATUS) == "running" for r in runs))

        wait_for(trained_on, 300, "both trials past a checkpoint of this job", interval=0.2)
        instance = ray_instance_of(driver.pid, experiment)
        driver.send_signal(signal_number)
        sent = time.monotonic()
        code = driver.wait(timeout=200)
        took = time.monotonic() - sent
    finally:
        kill_session(driver)
    assert code == EXIT_REQUEUE, log.read_text()[-3000:]
    assert not _alive(instance), [(p.pid, p.name()) for p in _alive(instance)]  # the local Ray instance ended
    assert not (experiment / "ray_session.json").exists()
    return took


@pytest.mark.timeout(2400)  # several driver starts, each seconds to a minute on a loaded 2-core machine
def test_a_search_stopped_by_job_end_signals_continues_from_the_iteration_it_stopped_at(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Evaluations (with their checkpoints) 20 iterations apart: the stop must not wait for the next one. 400
    # iterations: the trials start seconds apart (one was at iteration 72 when the other passed 20), so each
    # still has many checkpoints ahead after the first job's stop and the second job signals both while they run.
    space = write_space(tmp_path, "jobs", {"schedule.iterations": 400, "schedule.eval_every": 20,
                                           "model.auxt.enabled": False, "schedule.lr": {"grid": [1e-3, 2e-3]}},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    experiment = results / "jobs"
    command = LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri,
                            "--resume-if-exists"]
    took = [stop_with(signal.SIGUSR1, command, tmp_path / "job1.log", experiment, uri, "jobs"),
            stop_with(signal.SIGTERM, command, tmp_path / "job2.log", experiment, uri, "jobs")]
    assert "continuing it" in (tmp_path / "job2.log").read_text()
    for job in ("job1.log", "job2.log"):
        text = (tmp_path / job).read_text()
        assert "every running trial checkpoints at its next iteration" in text, text[-3000:]
        assert "lic-search resume" in text  # stopped unfinished: resuming helps, and the console says how
    last = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert last.returncode == EXIT_FINISHED, last.stdout[-3000:] + last.stderr[-3000:]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == EXIT_FINISHED and "finished" in again.stdout, again.stdout + again.stderr

    trials = attempts(experiment)
    assert len(trials) == 2
    for trial, parts in trials.items():
        assert len(parts) == 3, (trial, [[r[M.ITERATIONS] for r in p] for p in parts])  # three jobs, three attempts
        for ended, next_attempt in zip(parts, parts[1:]):
            stopped = ended[-1]
            # The job's end checkpointed at the iteration after the signal (not at the next evaluation) and the
            # next job started exactly there: no iteration lost, none trained twice.
            assert stopped.get(M.NOTICE) == M.NOTICE_PREEMPTED, stopped
            assert next_attempt[0][M.RESTORED_AT] == stopped[M.ITERATIONS]
        iterations = [r[M.ITERATIONS] for p in parts for r in p if not M.is_notice(r)]  # trained
        assert iterations == sorted(set(iterations)) and iterations[-1] == 400, iterations
    runs = trial_runs(uri, "jobs")
    assert len(runs) == 2  # one MLflow run per trial across the three jobs
    client = client_for(uri)
    for run in runs:
        assert run.data.tags[T.TAG_STATUS] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
        assert steps == list(range(20, 401, 20))  # continuous, no step twice

    # Another space under the same name is refused before anything starts, naming the first differing key.
    changed = space.read_text().replace("iterations: 400", "iterations: 420")
    space.write_text(changed)
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == EXIT_REFUSED
    assert "trial.schedule.iterations: differs from the space of the search stored in" in refused.stderr
    print(f"signal -> driver exit: {took[0]:.1f} s (SIGUSR1), {took[1]:.1f} s (SIGTERM)")


def test_a_trial_whose_every_checkpoint_is_damaged_ends_errored_without_a_useless_resume_hint(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, "broken", {"schedule.iterations": 400, "schedule.eval_every": 20,
                                             "model.auxt.enabled": False},
                        {"max_concurrent": 1}, {"type": "fifo"})
    results = tmp_path / "results"
    experiment = results / "broken"
    command = LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri,
                            "--resume-if-exists"]
    driver = start(command, tmp_path / "job1.log")
    try:
        wait_for(lambda: experiment.is_dir() and newest_checkpoints(experiment), 300, "a checkpoint", interval=0.2)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=200) == EXIT_REQUEUE, (tmp_path / "job1.log").read_text()[-3000:]
    finally:
        kill_session(driver)
    damaged = 0
    for state in experiment.glob("*/checkpoint_*/*.pt"):
        state.write_bytes(state.read_bytes()[:100])  # truncated: its checksum no longer matches
        damaged += 1
    assert damaged >= 1
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == EXIT_ERRORED_TRIALS, output[-3000:]
    assert "1 trials (1 errored)" in output
    assert "lic-search resume" not in output  # every checkpoint damaged: resuming cannot help
