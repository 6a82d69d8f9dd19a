"""Real processes: a two-node Ray cluster on loopback, an `mlflow server` over HTTP, a driver
killed with SIGKILL and resumed, and a trial process killed mid-training and retried."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from search.cli import main
from search.tracking import names as T
from search.tracking.client import client_for
from tests.conftest import RAY_CLI
from tests.test_search_e2e import write_space
from trainables import metrics as M

pytestmark = pytest.mark.slow
LIC_SEARCH = [sys.executable, "-m", "search.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, extra_env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start a process in its own session so the test can kill it and all it spawned."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0", **(extra_env or {})}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=env, **kwargs)


def kill_session(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def ray_daemons() -> set[int]:
    names = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env")
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "ray" in line and any(name in line for name in names):
            found.add(process.pid)
    return found


_SESSION_STARTER = re.compile(r"/session_[\d_-]+_(\d+)(?:/|\s|$)")


def _session_starter(pid: int) -> int | None:
    """The pid of the process that started the Ray instance this daemon belongs to (the ``_<pid>`` ending of
    its session folder, which ``ray.init`` names after the calling process), None if its command line has none."""
    try:
        found = _SESSION_STARTER.search(" ".join(psutil.Process(pid).cmdline()))
    except psutil.Error:
        return None
    return int(found.group(1)) if found else None


def kill_orphaned_ray(before: set[int]) -> None:
    """A driver killed with SIGKILL leaves its local Ray instance behind: clean it up. Only instances whose
    starting driver is gone: a live driver's instance (another test running beside this one) is left alone, and
    so is any process that names no session folder (a ``ray start --include-dashboard=false`` of another test's
    cluster matches :func:`ray_daemons` by name, but every daemon of a local instance names its session)."""
    for pid in ray_daemons() - before:
        starter = _session_starter(pid)
        if starter is not None and not psutil.pid_exists(starter):
            kill_processes([pid])


def kill_processes(pids) -> None:
    """SIGKILL each of these processes that still exists."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def result_iterations(experiment_dir: Path) -> dict[str, list[int]]:
    """Per trial folder, the `iterations` of every result Ray recorded (result.json lines)."""
    found = {}
    for result_file in experiment_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        found[lines[0]["trial_id"] if lines else result_file.parent.name] = [int(r[M.ITERATIONS]) for r in lines]
    return found


def newest_checkpoint(experiment_dir: Path, trial_id: str) -> int:
    (trial_dir,) = experiment_dir.glob(f"*{trial_id}*")
    return max(int(p.name.split("_")[-1]) for p in trial_dir.glob("checkpoint_*"))


def trial_runs(uri: str, experiment: str) -> list:
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_TRIAL}'")


def test_unreachable_tracking_server_is_reported_before_ray_starts(tmp_path: Path, capsys):
    import ray

    space = write_space(tmp_path, "unreachable", {}, {}, {"type": "fifo"})
    code = main(["run", str(space), "--storage-path", str(tmp_path / "r"),
                 "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert code == 2
    assert "unreachable" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "r").exists()


@contextlib.contextmanager
def loopback_cluster(tmp_path: Path, auth: dict, head_env: dict | None = None):
    """A real two-node Ray cluster on loopback (``ray start`` head + worker, one CPU each); yields
    ``(address, worker)`` and stops both nodes on exit (SIGTERM, then their whole sessions)."""
    port = free_port()
    head = start([RAY_CLI, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                  "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"],
                 tmp_path / "head.log", {**auth, **(head_env or {})})
    worker = None
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), 60, "the head node")
        worker = start([RAY_CLI, "start", "--block", f"--address={address}", "--num-cpus=1",
                        "--node-ip-address=127.0.0.1", "--disable-usage-stats"], tmp_path / "worker.log", auth)
        wait_for(lambda: "Ray runtime started" in (tmp_path / "worker.log").read_text(), 60, "the worker node")
        yield address, worker
    finally:
        for process in (worker, head):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    kill_session(process)


def test_two_node_cluster_on_loopback_runs_trials_on_both_nodes(tmp_path: Path):
    import secrets

    # Ray's token authentication: every node and the driver share one token.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with loopback_cluster(tmp_path, auth) as (address, _):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        space = write_space(tmp_path, "cluster", {"schedule.iterations": 4}, {"max_concurrent": 2}, {"type": "fifo"})
        driver = subprocess.run(LIC_SEARCH + ["run", str(space), "--address", address, "--storage-path",
                                              str(tmp_path / "results"), "--tracking-uri", uri],
                                capture_output=True, text=True, timeout=300, env={**os.environ, **auth})
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
        runs = trial_runs(uri, "cluster")
        assert len(runs) == 2
        assert all(r.data.tags[T.TAG_STATUS] == "completed" for r in runs)
        assert len({r.data.tags[T.TAG_NODE] for r in runs}) == 2  # one trial on each node


def test_search_over_http_to_a_real_mlflow_server(tmp_path: Path):
    port = free_port()
    server = start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                   tmp_path / "server.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_mlflow_server(uri, tmp_path / "server.log")
        space = write_space(tmp_path, "http", {"schedule.iterations": 4}, {"max_concurrent": 2}, {"type": "fifo"})
        driver = subprocess.run(LIC_SEARCH + ["run", str(space), "--storage-path", str(tmp_path / "results"),
                                              "--tracking-uri", uri], capture_output=True, text=True, timeout=300)
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
        client = client_for(uri)
        experiment = client.get_experiment_by_name("http")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get(T.TAG_ROLE) == T.ROLE_SEARCH]
        children = [r for r in runs if r.data.tags.get(T.TAG_ROLE) == T.ROLE_TRIAL]
        assert len(parents) == 1 and len(children) == 2
        assert parents[0].info.status == "FINISHED"
        for child in children:
            assert child.data.tags[T.TAG_PARENT] == parents[0].info.run_id
            assert child.data.tags[T.TAG_BACKBONE] == "mbt2018-mean"
            assert child.data.tags[T.TAG_AUXT] in ("both", "off")
            assert child.data.tags[T.TAG_STATUS] == "completed"
            assert child.data.params["model.auxt.enabled"] in ("True", "False")
            history = client.get_metric_history(child.info.run_id, M.EVAL_PSNR)
            assert [m.step for m in history] == [2, 4]
            config_path = client.download_artifacts(child.info.run_id, T.ARTIFACT_TRIAL_CONFIG, str(tmp_path))
            assert "backbone: mbt2018-mean" in Path(config_path).read_text()
    finally:
        kill_session(server)


def _healthy(uri: str) -> bool:
    try:
        return requests.get(uri + "/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for_mlflow_server(uri: str, log: Path) -> None:
    """Until the `mlflow server` at ``uri`` answers /health; a timeout says what its log ``log`` ends with.

    As long as `lic-search ui` waits for one: a fresh server imports MLflow and creates its tables in seconds on an
    idle machine, but took over 90 s beside the other pytest worker's searches."""
    from search.commands.ui import STARTUP_SECONDS

    try:
        wait_for(lambda: _healthy(uri), STARTUP_SECONDS, "mlflow server")
    except AssertionError as error:
        raise AssertionError(f"{error}; {log.name} ends: {log.read_text()[-2000:]}") from None


def test_driver_killed_with_sigkill_resumes_without_losing_or_repeating_work(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Long enough (a few seconds per trial) that the kill lands while trials are mid-training.
    space = write_space(tmp_path, "killed", {"schedule.iterations": 200, "schedule.eval_every": 20,
                                             "schedule.lr": {"grid": [1e-3, 2e-3]}},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    command = LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri]
    daemons = ray_daemons()
    driver = start(command, tmp_path / "driver.log")

    def progress():
        done = [r for r in trial_runs(uri, "killed") if r.data.tags.get(T.TAG_STATUS) == "completed"]
        partial = [r for r in trial_runs(uri, "killed") if r.data.tags.get(T.TAG_STATUS) == "running"
                   and r.data.metrics.get(M.ITERATIONS, 0) >= 20]
        return done and partial

    try:
        try:
            wait_for(progress, 300, "one finished and one half-trained trial", interval=0.2)
            instance = ray_instance_of(driver.pid, results / "killed")
        except BaseException:
            kill_session(driver)
            raise
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: its Ray instance is left to itself
        driver.wait(timeout=30)
        _check_resume_after_sigkill(tmp_path, uri, results, instance)
    finally:
        kill_orphaned_ray(daemons)


def ray_instance_of(driver_pid: int, experiment: Path) -> list:
    """The processes of the local Ray instance a driver started: its descendants, and any process holding
    a file open in the Ray session folder the driver recorded."""
    session_dir = json.loads((experiment / "ray_session.json").read_text())["session_dir"].rstrip("/") + "/"
    found = {p.pid: p for p in psutil.Process(driver_pid).children(recursive=True)}
    for process in psutil.process_iter():
        try:
            if any(f.path.startswith(session_dir) for f in process.open_files()):
                found.setdefault(process.pid, process)
        except psutil.Error:
            continue
    assert len(found) >= 3, found  # gcs_server, raylet and trial workers at least
    return list(found.values())


def _alive(processes: list) -> list:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            pass
    return alive


def _check_resume_after_sigkill(tmp_path: Path, uri: str, results: Path, instance: list) -> None:
    # Ray's result.json may lose its last lines to SIGKILL; checkpoints are written before the
    # result is reported, so the newest checkpoint index tells how far each trial trained.
    finished_before = {r.data.tags[T.TAG_TRIAL_ID] for r in trial_runs(uri, "killed")
                       if r.data.tags.get(T.TAG_STATUS) == "completed"}
    checkpoints_before = {t: newest_checkpoint(results / "killed", t) for t in finished_before}
    assert finished_before

    left_over = _alive(instance)
    resumed = subprocess.run(LIC_SEARCH + ["resume", str(results / "killed")], capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # No process of the killed driver's Ray instance outlives the resume (nor of the resume's own).
    assert not _alive(instance), [(p.pid, p.name()) for p in _alive(instance)]
    if left_over:
        assert "leftover processes of the local Ray instance" in resumed.stdout, resumed.stdout[-3000:]
    assert not (results / "killed" / "ray_session.json").exists()
    after = result_iterations(results / "killed")
    assert len(after) == 4
    for trial, iterations in after.items():
        # Restarting from zero would go back to 20. Continuing from the last checkpoint Ray had
        # recorded may redo the one evaluation interval the kill interrupted, never more.
        assert iterations == sorted(iterations) and iterations[-1] == 200, (trial, iterations)
        assert sorted(set(iterations)) == list(range(20, 201, 20)), (trial, iterations)
        assert len(iterations) - len(set(iterations)) <= 1, (trial, iterations)
    for trial, index in checkpoints_before.items():
        assert newest_checkpoint(results / "killed", trial) == index  # finished trials never trained again
    runs = trial_runs(uri, "killed")
    assert len(runs) == 4  # exactly one MLflow run per trial
    client = client_for(uri)
    for run in runs:
        assert run.data.tags[T.TAG_STATUS] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
        assert steps == list(range(20, 201, 20))


def test_trial_process_killed_mid_training_is_retried_from_its_checkpoint(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, "retry", {"schedule.iterations": 300, "schedule.eval_every": 20,
                                            "model.auxt.enabled": True},
                        {"max_concurrent": 1}, {"type": "fifo"})
    text = space.read_text().replace("max_failures: 0", "max_failures: 2")
    space.write_text(text)
    results = tmp_path / "results"
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri],
                   tmp_path / "driver.log")
    try:
        victim = wait_for(lambda: _trial_process(driver, uri, "retry", 40), 300,
                          "a trial process past its first checkpoints", interval=0.2)
        victim.kill()
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        kill_session(driver)
    iterations = next(iter(result_iterations(results / "retry").values()))
    # Restarting from zero would report iteration 20 again after later ones; from the checkpoint it goes on.
    assert iterations == sorted(iterations) and iterations[-1] == 300
    state = next((results / "retry").glob("experiment_state-*.json")).read_text()
    assert '\\"num_failures\\": 1' in state  # Ray saw the crash and retried the trial
    run = trial_runs(uri, "retry")[0]
    assert run.data.tags[T.TAG_STATUS] == "completed"
    steps = [m.step for m in client_for(uri).get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
    assert steps == list(range(20, 301, 20))  # one run, continuous history across the retry


def test_ctrl_c_stops_after_each_trials_next_checkpoint_and_leaves_no_ray_process(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, "interrupted", {"schedule.iterations": 2000, "schedule.eval_every": 20},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    experiment = results / "interrupted"
    log = tmp_path / "driver.log"
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri], log)

    def newest() -> dict[str, int]:
        return {folder.name: max(int(p.name.split("_")[-1]) for p in folder.glob("checkpoint_*"))
                for folder in experiment.glob("*") if folder.is_dir() and any(folder.glob("checkpoint_*"))}

    try:
        wait_for(lambda: len(newest()) == 2, 300, "a checkpoint of both trials", interval=0.2)
        instance = ray_instance_of(driver.pid, experiment)
        before = newest()
        driver.send_signal(signal.SIGINT)
        code = driver.wait(timeout=300)
    finally:
        kill_session(driver)
    output = log.read_text()
    assert code == 130, output[-3000:]
    assert f"lic-search resume {experiment}" in output
    after = newest()
    for trial, index in before.items():
        assert after[trial] > index, (before, after)  # each trial went on to its next checkpoint...
    assert all(r.data.metrics[M.ITERATIONS] < 2000 for r in trial_runs(uri, "interrupted"))  # ...and stopped there
    assert not _alive(instance), [(p.pid, p.name()) for p in _alive(instance)]
    assert not (experiment / "ray_session.json").exists()
    client = client_for(uri)
    parent = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id],
                                filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}'")[0]
    assert parent.info.status == "KILLED"


def test_ctrl_c_twice_stops_at_once(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The first checkpoint is minutes away: stopping "now" must not wait for it.
    space = write_space(tmp_path, "twice", {"schedule.iterations": 20000, "schedule.eval_every": 10000},
                        {"max_concurrent": 2}, {"type": "fifo"})
    experiment = tmp_path / "results" / "twice"
    log = tmp_path / "driver.log"
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(tmp_path / "results"),
                                 "--tracking-uri", uri], log)
    try:
        wait_for(lambda: len(trial_runs(uri, "twice")) == 2, 300, "both trials started", interval=0.2)
        instance = ray_instance_of(driver.pid, experiment)
        driver.send_signal(signal.SIGINT)
        time.sleep(2)
        driver.send_signal(signal.SIGINT)
        stopped_at = time.time()
        code = driver.wait(timeout=120)
        took = time.time() - stopped_at
    finally:
        kill_session(driver)
    output = log.read_text()
    assert code == 130, output[-3000:]
    assert "stopping now" in output and f"lic-search resume {experiment}" in output
    assert took < 60 and not list(experiment.glob("*/checkpoint_*"))  # no trial reached its checkpoint
    assert not _alive(instance), [(p.pid, p.name()) for p in _alive(instance)]


def _trial_results(experiment_dir: Path) -> list[dict]:
    """Every result Ray recorded for the search's only trial (result.json lines)."""
    (result_file,) = experiment_dir.glob("*/result.json")
    return [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]


def trial_processes(root_pid: int) -> list:
    """Trial processes (``ray::ImplicitFunc.train``) among the descendants of ``root_pid`` (a driver that
    started its own Ray instance, or a `ray start` node): never another search's on the same machine."""
    try:
        descendants = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in descendants:
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "ImplicitFunc" in title and "train" in title:
            found.append(process)
    return found


def _trial_process(driver: subprocess.Popen, uri: str, experiment: str, past_iteration: int):
    """The process training the search's trial, once its MLflow run has passed ``past_iteration``."""
    runs = trial_runs(uri, experiment)
    if not runs or runs[0].data.metrics.get(M.ITERATIONS, 0) < past_iteration:
        return None
    return next(iter(trial_processes(driver.pid)), None)


def test_sigterm_checkpoints_at_once_and_the_trial_resumes_there_without_using_max_failures(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # max_failures: 0 (write_space): a preemption counted as a failure would end the trial errored.
    space = write_space(tmp_path, "preempt", {"schedule.iterations": 200, "schedule.eval_every": 40,
                                              "schedule.checkpoint_minutes": 0.01, "model.auxt.enabled": True},
                        {"max_concurrent": 1}, {"type": "fifo"})
    results = tmp_path / "results"
    log = tmp_path / "driver.log"
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri], log)
    try:
        def past_first_evaluation():  # read from Ray's result.json: MLflow gets it later (the sender's pace)
            for result_file in (results / "preempt").glob("*/result.json"):
                if '"iterations": 40' in result_file.read_text():
                    return next(iter(trial_processes(driver.pid)), None)
            return None

        victim = wait_for(past_first_evaluation, 300, "the trial past its first evaluation", interval=0.1)
        victim.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        kill_session(driver)
    # Ray's result.json may miss the last line of an attempt that ended (the notice itself); the console, the
    # run's tag and every result of the next attempt say where it stopped.
    lines = _trial_results(results / "preempt")
    first = next(i for i, r in enumerate(lines) if M.RESTORED_AT in r)
    stopped_at = lines[first][M.RESTORED_AT]
    assert all(r[M.RESTORED_AT] == stopped_at for r in lines[first:])  # the next attempt started right there
    assert all(M.RESTORED_AT not in r and r[M.ITERATIONS] <= stopped_at for r in lines[:first])
    assert f"got SIGTERM: checkpointed at iteration {stopped_at};" in log.read_text()
    assert [r[M.ITERATIONS] for r in lines if not M.is_notice(r)] == [40, 80, 120, 160, 200]
    assert any(r.get(M.NOTICE) == M.NOTICE_CHECKPOINT for r in lines)  # the clock checkpointed between them
    state = next((results / "preempt").glob("experiment_state-*.json")).read_text()
    assert '\\"num_failures\\": 0' in state
    run = trial_runs(uri, "preempt")[0]
    assert run.data.tags[T.TAG_STATUS] == "completed"
    assert run.data.tags[T.TAG_PREEMPTED].startswith(f"iteration {stopped_at} on node ")
    client = client_for(uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)] == [40, 80, 120, 160, 200]
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.ITERATIONS)] == [40, 80, 120, 160, 200]


def _node_processes(root: subprocess.Popen) -> list:
    """A `ray start --block` node: the CLI process, its raylet and the raylet's workers."""
    try:
        parent = psutil.Process(root.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_a_lost_worker_node_costs_one_checkpoint_interval_not_the_trial(tmp_path: Path):
    import secrets

    # One token for the nodes and the driver; the head notices a dead node within seconds, not ~30 s.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    fast = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_initial_delay_ms": "1000"}
    with loopback_cluster(tmp_path, auth, fast) as (address, worker):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        # Two trials, one per node; the clock checkpoints between evaluations (every 0.6 s).
        space = write_space(tmp_path, "lost", {"schedule.iterations": 120, "schedule.eval_every": 40,
                                               "schedule.checkpoint_minutes": 0.01}, {"max_concurrent": 2},
                            {"type": "fifo"})
        space.write_text(space.read_text().replace("max_failures: 0", "max_failures: 1"))
        results = tmp_path / "results"
        log = tmp_path / "driver.log"
        driver = start(LIC_SEARCH + ["run", str(space), "--address", address, "--storage-path", str(results),
                                     "--tracking-uri", uri], log, auth)
        try:
            def training_on_worker():
                runs = trial_runs(uri, "lost")
                if len(runs) < 2 or min(r.data.metrics.get(M.ITERATIONS, 0) for r in runs) < 40:
                    return None
                return trial_processes(worker.pid)

            wait_for(training_on_worker, 300, "a trial training on the worker node past an evaluation", interval=0.2)
            for process in _node_processes(worker):  # the node is gone: its raylet and workers die at once
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
        finally:
            kill_session(driver)
        client = client_for(uri)
        runs = trial_runs(uri, "lost")
        assert len(runs) == 2 and all(r.data.tags[T.TAG_STATUS] == "completed" for r in runs)
        for run in runs:  # each history continuous, no step twice
            assert [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)] == [40, 80, 120]
            assert [m.step for m in client.get_metric_history(run.info.run_id, M.ITERATIONS)] == [40, 80, 120]
        assert len({r.data.tags[T.TAG_NODE] for r in runs}) == 1  # both ended on the head node
        moved = []
        for result_file in (results / "lost").glob("*/result.json"):
            lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
            restored = [r for r in lines if M.RESTORED_AT in r]
            if restored:
                before = lines[:lines.index(restored[0])]
                # Resumed from a checkpoint at or past every result Ray recorded of the lost attempt (result.json
                # may miss its last line): at most one clock interval lost.
                assert restored[0][M.RESTORED_AT] >= max(r[M.ITERATIONS] for r in before)
                assert len({r[M.NODE_ID] for r in before}) == 1 and restored[0][M.NODE_ID] != before[-1][M.NODE_ID]
                moved.append(result_file)
        assert len(moved) == 1
