"""``resources.workers_per_trial``: the rules of the split (validate and run refuse a space before
Ray starts), the cluster check, and a 2-worker gloo search end to end through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.errors import SpaceError
from search.space import load_space
from search.tracking import names as T
from search.tracking.queries import trial_runs
from search.tuning.resource_check import check_workers_fit, concurrent_trials
from tests.test_resources import node
from tests.test_search_e2e import write_space
from trainables import metrics as M
from trainables.training.data_parallel_trainable import WorkerGroup


def _space(tmp_path: Path, resources: dict, **trial) -> Path:
    path = write_space(tmp_path, "dp", trial, {}, {"type": "fifo"})
    space = yaml.safe_load(path.read_text())
    space["resources"] = {"cpus_per_trial": 2, "max_failures": 0, "workers_per_trial": 2, **resources}
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize("resources, trial, key, rule", [
    ({"gpus_per_trial": 1}, {}, "resources.gpus_per_trial", "1 gives 0.5 GPU per worker"),
    ({"cpus_per_trial": 3}, {}, "resources.cpus_per_trial", "3 gives 1.5 CPU per worker"),
    ({}, {"data.batch_size": 5}, "trial.data.batch_size", "5 does not split into 2 equal shares"),
    ({}, {"data.crop_schedule": [[0.0, 64, 4], [0.5, 64, 3]]}, "trial.data.crop_schedule[1]",
     "batch_size 3 does not split into 2 equal shares"),
])
def test_a_split_that_does_not_divide_is_refused_at_its_key(tmp_path: Path, capsys, resources, trial, key, rule):
    space = _space(tmp_path, resources, **trial)
    with pytest.raises(SpaceError) as caught:
        load_space(space)
    assert caught.value.key_path == key and rule in str(caught.value)
    assert "resources.workers_per_trial is 2" in str(caught.value)
    for command in (["validate", str(space)], ["run", str(space), "--storage-path", str(tmp_path / "r")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert key in err and rule in err, err
    assert not (tmp_path / "r").exists()  # refused before Ray or the experiment folder


def test_even_splits_pass_and_describe_the_workers(tmp_path: Path, capsys):
    space = _space(tmp_path, {"cpus_per_trial": 4, "gpus_per_trial": 0}, **{"data.batch_size": 4})
    assert main(["validate", str(space)]) == 0
    assert "over 2 data-parallel workers" in capsys.readouterr().out


def test_worker_group_layout_leaves_the_coordinator_its_sliver_of_the_total():
    group = WorkerGroup(workers=2, cpus_per_trial=2, gpus_per_trial=0)
    assert group.worker_resources() == {"CPU": 0.995} and group.threads_per_worker == 1
    assert 2 * group.cpus_per_worker + 0.01 <= 2  # the whole trial fits a 2-CPU machine
    assert WorkerGroup(8, 16, 8).worker_resources() == {"CPU": 1.9987, "GPU": 1.0}


def test_cluster_check_counts_worker_bundles_over_nodes():
    bundle = WorkerGroup(4, 8, 4).worker_resources()
    check_workers_fit(4, bundle, [node(4, 2), node(4, 2)], "s.yaml")  # 2 + 2 workers on two nodes
    assert concurrent_trials(4, bundle, [node(4, 2), node(4, 2), node(16, 8)]) == 3
    with pytest.raises(SpaceError) as caught:
        check_workers_fit(4, bundle, [node(8, 2), node(2, 1)], "s.yaml")
    assert caught.value.key_path == "resources.workers_per_trial"
    assert "holds 3 such worker(s)" in str(caught.value)


@pytest.mark.slow
def test_two_worker_search_end_to_end(tmp_path: Path, ray_cluster, capsys):
    """Two trials of 2 gloo workers each on a 2-CPU Ray: one MLflow run per trial, finite eval/rd_loss,
    status shows the workers and device-hours, best works unchanged."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = _space(tmp_path, {}, **{"data.batch_size": 2, "schedule.iterations": 4})
    assert main(["run", str(space), "--storage-path", str(tmp_path / "results"), "--tracking-uri", uri]) == 0
    runs = trial_runs("dp", uri)
    assert len(runs) == 2
    from search.tracking.client import client_for

    client = client_for(uri)
    for run in runs:
        assert run.data.params["resources.workers_per_trial"] == "2"
        assert run.data.tags[T.TAG_STATUS] == "completed"
        history = client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)
        assert [m.step for m in history] == [2, 4] and all(math.isfinite(m.value) for m in history)
    folder = tmp_path / "results" / "dp"
    assert not any((folder / "train_runs").iterdir())  # Train's own copies are gone; Tune keeps the checkpoints
    capsys.readouterr()
    assert main(["status", str(folder), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["workers_per_trial"] == 2 and status["counts"]["completed"] == 2
    assert status["device_hours"] > 0 and status["device_hours_unit"] == "CPU-hours"
    assert main(["status", str(folder)]) == 0
    assert "2 workers per trial" in capsys.readouterr().out
    assert main(["best", "dp", "--tracking-uri", uri]) == 0
    best = capsys.readouterr().out
    assert "best per rate point" in best and sum(run.info.run_id in best for run in runs) == 1


def test_reaper_removes_the_worker_groups_of_trials_that_stopped_running(ray_cluster):
    """ASHA's stop (or a dead coordinator) ends the Train controller before it releases its workers'
    placement group: the driver removes every group a trial's workers recorded once the trial is no
    longer RUNNING, and the groups of its earlier attempts at once."""
    from types import SimpleNamespace

    import ray
    from ray.util.placement_group import placement_group

    from search.tuning.worker_groups import WorkerGroupReaper, start_registry

    first, second = placement_group([{"CPU": 0.2}, {"CPU": 0.2}]), placement_group([{"CPU": 0.2}])
    ray.get([first.ready(), second.ready()], timeout=60)
    reaper = WorkerGroupReaper(start_registry())
    ray.get(reaper.registry.record.remote("t1", first.id.hex()))
    trial = SimpleNamespace(trial_id="t1", status="RUNNING")
    state = lambda group: ray.util.placement_group_table(group)["state"]  # noqa: E731
    reaper.reap([trial])
    assert state(first) == "CREATED"  # the running attempt keeps its workers
    ray.get(reaper.registry.record.remote("t1", second.id.hex()))  # a retry started elsewhere
    reaper.reap([trial])
    assert (state(first), state(second)) == ("REMOVED", "CREATED")
    trial.status = "TERMINATED"
    reaper.reap([trial])
    assert state(second) == "REMOVED"
    reaper.reap([trial])  # nothing left to remove, nothing raised


@pytest.mark.slow
def test_sigkilled_two_worker_search_resumes_with_continuous_histories(tmp_path: Path):
    """The driver of a 2-worker search is SIGKILLed mid-trial; `resume` continues the trial from its
    last Tune checkpoint: the MLflow history runs 4, 8, ... 40 with no step twice."""
    import signal

    from search.tracking.client import client_for
    from tests.test_faults_and_clusters import (LIC_SEARCH, kill_orphaned_ray, kill_session, ray_daemons,
                                                result_iterations, start, trial_runs, wait_for)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = _space(tmp_path, {}, **{"model.auxt.enabled": False, "schedule.iterations": 40,
                                    "schedule.eval_every": 4})
    results = tmp_path / "results"
    daemons = ray_daemons()
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri],
                   tmp_path / "driver.log")
    try:
        try:
            wait_for(lambda: any(r.data.metrics.get(M.ITERATIONS, 0) >= 8 for r in trial_runs(uri, "dp")), 300,
                     "a trial 8 iterations in", interval=0.2)
        except BaseException:
            kill_session(driver)
            raise
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        resumed = subprocess.run(LIC_SEARCH + ["resume", str(results / "dp")], capture_output=True, text=True,
                                 timeout=400)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_orphaned_ray(daemons)
    (iterations,) = result_iterations(results / "dp").values()
    assert iterations == sorted(iterations) and sorted(set(iterations)) == list(range(4, 41, 4)), iterations
    assert len(iterations) - len(set(iterations)) <= 1, iterations  # at most the interval the kill cut
    (run,) = trial_runs(uri, "dp")
    assert run.data.tags[T.TAG_STATUS] == "completed"
    steps = [m.step for m in client_for(uri).get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
    assert steps == list(range(4, 41, 4))


def _train_workers(root_pid: int) -> list:
    """The Ray Train worker processes (``ray::RayTrainWorker...``) among ``root_pid``'s descendants."""
    import psutil

    found = []
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker", "coordinator", "driver"])
def test_sigterm_to_a_worker_or_the_coordinator_checkpoints_and_resumes_there_without_a_failure(tmp_path: Path,
                                                                                              victim: str):
    """A 2-worker gloo trial (``max_failures: 0``) gets SIGTERM in one worker, or in its coordinator: every rank
    stops at the next iteration after rank 0 checkpointed there, the attempt is a preemption (num_failures 0), the
    next one starts at exactly that iteration, the clock checkpointed between evaluations, and the MLflow history
    has each evaluation once. ``driver``: a job's end (SIGTERM to the driver) passes SIGTERM on to the coordinator
    the same way; the driver exits 75 and ``resume`` continues from that iteration."""
    import signal

    from search.commands._shared import EXIT_REQUEUE
    from search.tracking.client import client_for
    from tests.test_faults_and_clusters import LIC_SEARCH, kill_session, start, trial_processes, wait_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = _space(tmp_path, {}, **{"model.auxt.enabled": False, "schedule.iterations": 40,
                                    "schedule.eval_every": 8, "schedule.checkpoint_minutes": 0.01})
    results = tmp_path / "results"
    log = tmp_path / "driver.log"
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri], log)
    try:
        def past_first_evaluation():
            for result_file in (results / "dp").glob("*/result.json"):
                if '"iterations": 8,' in result_file.read_text():
                    if victim == "driver":
                        return driver
                    found = _train_workers(driver.pid) if victim == "worker" else trial_processes(driver.pid)
                    return found[-1] if found else None
            return None

        wait_for(past_first_evaluation, 400, "the trial past its first evaluation", interval=0.1).send_signal(
            signal.SIGTERM)
        assert driver.wait(timeout=500) == (EXIT_REQUEUE if victim == "driver" else 0), log.read_text()[-3000:]
    finally:
        kill_session(driver)
    if victim == "driver":
        resumed = tmp_path / "resume.log"
        again = start(LIC_SEARCH + ["resume", str(results / "dp")], resumed)
        try:
            assert again.wait(timeout=500) == 0, resumed.read_text()[-3000:]
        finally:
            kill_session(again)
        log.write_text(log.read_text() + resumed.read_text())
    (result_file,) = (results / "dp").glob("*/result.json")
    lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    first = next(i for i, r in enumerate(lines) if M.RESTORED_AT in r)
    stopped_at = lines[first][M.RESTORED_AT]
    assert 8 <= stopped_at < 40 and all(r[M.RESTORED_AT] == stopped_at for r in lines[first:])
    assert all(M.RESTORED_AT not in r and r[M.ITERATIONS] <= stopped_at for r in lines[:first])
    output = log.read_text()
    assert f"got SIGTERM: checkpointed at iteration {stopped_at};" in output, output[-3000:]
    assert [r[M.ITERATIONS] for r in lines if not M.is_notice(r)] == [8, 16, 24, 32, 40]
    assert any(r.get(M.NOTICE) == M.NOTICE_CHECKPOINT for r in lines)  # the clock checkpointed between them
    state = next((results / "dp").glob("experiment_state-*.json")).read_text()
    assert '\\"num_failures\\": 0' in state
    (run,) = trial_runs("dp", uri)
    assert run.data.tags[T.TAG_STATUS] == "completed"
    assert run.data.tags[T.TAG_PREEMPTED].startswith(f"iteration {stopped_at} on node ")
    client = client_for(uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)] == [8, 16, 24, 32, 40]


@pytest.mark.slow
def test_a_lost_worker_node_costs_a_two_worker_trial_one_checkpoint_interval(tmp_path: Path):
    """A real loopback cluster: a head without CPUs and one worker node that holds the whole 2-worker trial
    (coordinator and both workers). The node is killed mid-training (raylet and workers at once) and another
    joins: the trial continues there from the last checkpoint its lost attempt reported (the clock's, at most
    one interval back), the search exits 0, and the MLflow history has each evaluation once."""
    import secrets
    import signal

    from search.tracking.client import client_for
    from tests.conftest import RAY_CLI
    from tests.test_faults_and_clusters import (LIC_SEARCH, _node_processes, free_port, kill_session, start,
                                                wait_for)

    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    fast = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_initial_delay_ms": "1000"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes = [start([RAY_CLI, "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
                    "--include-dashboard=false", *common], tmp_path / "head.log", {**auth, **fast})]

    def join(name: str):
        log = tmp_path / f"{name}.log"
        node = start([RAY_CLI, "start", "--block", f"--address={address}", "--num-cpus=2", *common], log, auth)
        nodes.append(node)
        wait_for(lambda: "Ray runtime started" in log.read_text(), 120, f"node {name}")
        return node

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = _space(tmp_path, {"max_failures": 1},
                   **{"model.auxt.enabled": False, "schedule.iterations": 40, "schedule.eval_every": 8,
                      "schedule.checkpoint_minutes": 0.01})
    results = tmp_path / "results"
    log = tmp_path / "driver.log"
    try:
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), 120, "the head node")
        first = join("first")
        driver = start(LIC_SEARCH + ["run", str(space), "--address", address, "--storage-path", str(results),
                                     "--tracking-uri", uri], log, auth)
        try:
            def past_first_evaluation():
                return any('"iterations": 8,' in f.read_text() for f in (results / "dp").glob("*/result.json"))

            wait_for(past_first_evaluation, 500, "the trial past its first evaluation", interval=0.2)
            for process in _node_processes(first):  # the node is gone: its raylet and workers die at once
                try:
                    process.kill()
                except Exception:  # noqa: BLE001  (already gone)
                    pass
            join("second")
            assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            kill_session(driver)
    finally:
        for node in reversed(nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
                try:
                    node.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    kill_session(node)
    (result_file,) = (results / "dp").glob("*/result.json")
    lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    restored = [r for r in lines if M.RESTORED_AT in r]
    before = lines[:lines.index(restored[0])]
    assert restored[0][M.RESTORED_AT] >= max(r[M.ITERATIONS] for r in before)  # at most one clock interval lost
    assert restored[0][M.NODE_ID] != before[-1][M.NODE_ID]
    assert [r[M.ITERATIONS] for r in lines if not M.is_notice(r)] == [8, 16, 24, 32, 40]
    state = next((results / "dp").glob("experiment_state-*.json")).read_text()
    assert '\\"num_failures\\": 1' in state  # a lost node is a failure (unlike SIGTERM)
    (run,) = trial_runs("dp", uri)
    assert run.data.tags[T.TAG_STATUS] == "completed"
    steps = [m.step for m in client_for(uri).get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
    assert steps == [8, 16, 24, 32, 40]
