"""A real `mlflow server` that goes away mid-search: training goes on, nothing is lost or doubled.

The driver's MLflow client is told to give up quickly (no HTTP retries, 5 s timeout) so the
sender notices the outage at once; the outage lasts longer than any client retry budget."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.experiment.store import ExperimentStore
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking.client import client_for
from tests.conftest import tiny_trial
from tests.test_faults_and_clusters import (LIC_SEARCH, free_port, kill_session, start, trial_runs, wait_for,
                                            wait_for_mlflow_server)
from tests.test_search_e2e import write_space
from trainables import metrics as M

pytestmark = pytest.mark.slow

MLFLOW_CLI = str(Path(sys.executable).parent / "mlflow")
QUICK_GIVE_UP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# Longer than the sender's backoff takes to reach its 30 s cap (1 + 2 + 4 + 8 + 16 + 30 s): the outage
# outlasts every retry, and the search still ends complete.
OUTAGE_S = 65


class Server:
    """`mlflow server` on a free loopback port; stop() and start() keep its store."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"server-{self.starts}.log"
        self.process = start([MLFLOW_CLI, "server", "--host", "127.0.0.1", "--port", str(self.port),
                              "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
                              "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"], log)
        wait_for_mlflow_server(self.uri, log)

    def stop(self) -> None:
        if self.process is not None:
            kill_session(self.process)
            self.process = None


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    server.start()
    yield server
    server.stop()


def iterations_lasting(seconds: float, eval_every: int) -> int:
    """A budget that keeps a tiny trial training about ``seconds`` on this machine (timed, not guessed)."""
    from search.analysis.step_timing import seconds_per_iteration

    per_iteration = seconds_per_iteration(tiny_trial(**{"model.auxt.enabled": True}), steps=20, warmup=5)
    return eval_every * max(4, math.ceil(seconds / per_iteration / eval_every))


def first_result(uri: str, name: str, eval_every: int) -> bool:
    return any(r.data.metrics.get(M.ITERATIONS, 0) >= eval_every for r in trial_runs(uri, name))


def checkpoints(experiment: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in experiment.glob("*/checkpoint_*")}


def complete_histories(uri: str, name: str, steps: list[int]) -> None:
    client = client_for(uri)
    runs = trial_runs(uri, name)
    assert len(runs) == 2  # one run per trial, none created twice
    for run in runs:
        assert run.data.tags[T.TAG_STATUS] == T.STATUS_COMPLETED and run.info.status == "FINISHED"
        for metric in (M.EVAL_RD_LOSS, M.ITERATIONS):
            assert sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, metric)) == steps
    experiment = client.get_experiment_by_name(name)
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_training_goes_on_through_a_long_outage_and_mlflow_ends_complete(tmp_path: Path, server: Server):
    eval_every = 50
    # The outage starts after the first result and lasts OUTAGE_S; the trials must outlast it.
    iterations = iterations_lasting(OUTAGE_S + 45, eval_every)
    space = write_space(tmp_path, "outage", {"schedule.iterations": iterations, "schedule.eval_every": eval_every},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    log = tmp_path / "driver.log"
    # A generous end-of-search flush: the trials may end while the restarted server is still starting.
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", server.uri,
                                 "--tracking-flush-seconds", "120"], log, QUICK_GIVE_UP)
    try:
        wait_for(lambda: first_result(server.uri, "outage", eval_every), 300, "the first result in MLflow", interval=0.5)
        before = checkpoints(results / "outage")
        server.stop()
        down_until = time.time() + OUTAGE_S
        during: set[str] = set()
        while time.time() < down_until:
            assert driver.poll() is None, log.read_text()[-3000:]
            during |= checkpoints(results / "outage")
            time.sleep(1)
        assert driver.poll() is None, f"the trials ended during the outage: raise the budget ({iterations})"
        server.start()
        assert driver.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        kill_session(driver)
    written_during_outage = during - before
    # two trials, one checkpoint per evaluation: training did not wait for the tracking server
    assert len(written_during_outage) >= 4, (sorted(before), sorted(during))
    assert {name.split("/")[0] for name in written_during_outage} == {p.parent.name for p in
                                                                      (results / "outage").glob("*/result.json")}
    output = log.read_text()
    assert output.count("is unreachable") == 1, output[-3000:]
    assert "tracking caught up" in output
    assert J.Journal(ExperimentStore(results / "outage")).pending == 0
    complete_histories(server.uri, "outage", list(range(eval_every, iterations + 1, eval_every)))


def test_sync_ships_what_a_search_that_ended_during_an_outage_left_in_its_journal(tmp_path: Path, server: Server):
    eval_every = 50
    iterations = iterations_lasting(20, eval_every)
    space = write_space(tmp_path, "left", {"schedule.iterations": iterations, "schedule.eval_every": eval_every},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    log = tmp_path / "driver.log"
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", server.uri,
                                 "--tracking-flush-seconds", "3"], log, QUICK_GIVE_UP)
    try:
        wait_for(lambda: first_result(server.uri, "left", eval_every), 300, "the first result in MLflow", interval=0.5)
        server.stop()
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]  # the exit code ignores the tracking server
    finally:
        kill_session(driver)
    output = log.read_text()
    assert f"lic-search sync {results / 'left'}" in output
    left = J.Journal(ExperimentStore(results / "left"))
    assert left.pending > 0
    server.start()
    synced = subprocess.run(LIC_SEARCH + ["sync", str(results / "left")], capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stdout[-3000:] + synced.stderr[-3000:]
    assert f"shipped {left.pending} tracking records" in synced.stdout
    complete_histories(server.uri, "left", list(range(eval_every, iterations + 1, eval_every)))
    again = subprocess.run(LIC_SEARCH + ["sync", "left", "--storage-path", str(results)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout
    complete_histories(server.uri, "left", list(range(eval_every, iterations + 1, eval_every)))


def test_tracking_offline_starts_without_a_server_and_sync_creates_every_run_later(tmp_path: Path):
    from search.experiment.state import SearchState

    server = Server(tmp_path)  # not started yet
    eval_every = 50
    iterations = iterations_lasting(10, eval_every)
    space = write_space(tmp_path, "offline", {"schedule.iterations": iterations, "schedule.eval_every": eval_every},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    command = LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", server.uri,
                            "--tracking-flush-seconds", "2"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **QUICK_GIVE_UP})
    assert refused.returncode == 2 and "unreachable" in refused.stderr  # today's behaviour without the flag
    ran = subprocess.run(command + ["--tracking-offline"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **QUICK_GIVE_UP})
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "--tracking-offline" in ran.stdout and f"lic-search sync {results / 'offline'}" in ran.stdout
    assert SearchState.load(ExperimentStore(results / "offline")).parent_run_id == ""
    server.start()
    try:
        # `status` ships a journal no driver is shipping (bounded in time), as `sync` would
        status = subprocess.run(LIC_SEARCH + ["status", str(results / "offline")],
                                capture_output=True, text=True, timeout=300)
        assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
        tracking = [line for line in status.stdout.splitlines() if line.startswith("tracking: ")]
        assert len(tracking) == 1 and tracking[0].startswith("tracking: shipped"), status.stdout[-3000:]
        sync = LIC_SEARCH + ["sync", "offline", "--storage-path", str(results)]
        left = re.search(r"; (\d+) left: lic-search sync ", tracking[0])
        if left:  # status ships for at most SYNC_SECONDS (a loaded machine gets through fewer): sync ships the rest
            assert J.Journal(ExperimentStore(results / "offline")).pending == int(left.group(1))
            synced = subprocess.run(sync, capture_output=True, text=True, timeout=300)
            assert synced.returncode == 0 and "up to date" not in synced.stdout, \
                synced.stdout[-3000:] + synced.stderr[-3000:]
        complete_histories(server.uri, "offline", list(range(eval_every, iterations + 1, eval_every)))
        synced = subprocess.run(sync, capture_output=True, text=True, timeout=300)
        assert synced.returncode == 0 and "up to date" in synced.stdout, synced.stdout[-3000:] + synced.stderr[-3000:]
        parent = SearchState.load(ExperimentStore(results / "offline")).parent_run_id
        run = client_for(server.uri).get_run(parent)  # the state file learnt the parent run the sender created
        assert run.data.tags[T.TAG_SEARCH_DIR] == str(results / "offline")
        assert all(r.data.tags[T.TAG_PARENT] == parent for r in trial_runs(server.uri, "offline"))
    finally:
        server.stop()
