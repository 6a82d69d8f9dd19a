"""Fail fast on resources: a trial no node of the Ray cluster can fit is an error naming the key,
for the local instance and through --address, not an endless wait."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.errors import LicSearchError, SpaceError
from search.tuning.resource_check import check_trial_fits, trial_needs
from tests.test_search_e2e import write_space

RAY = Path(sys.executable).parent / "ray"
LIC_SEARCH = [sys.executable, "-m", "search.cli"]
NO_GPU = "resources.gpus_per_trial: 1, but no node of this cluster has a GPU"


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, "memory": 8e9, "node:127.0.0.1": 1.0}
    if gpus:
        resources["GPU"] = gpus
    return {"Alive": alive, "Resources": resources}


class _Resources:
    def __init__(self, cpus: float = 1.0, gpus: float = 0.0):
        self.cpus_per_trial, self.gpus_per_trial = cpus, gpus


def test_a_gpu_trial_on_gpu_less_nodes_names_the_key():
    with pytest.raises(SpaceError) as caught:
        check_trial_fits(trial_needs(_Resources(1, 1)), [node(2), node(4)], "space.yaml")
    assert str(caught.value).startswith(f"space.yaml: {NO_GPU} (2 node(s): 2 CPUs + 0 GPUs; 4 CPUs + 0 GPUs)")
    assert caught.value.key_path == "resources.gpus_per_trial"


def test_more_than_the_largest_node_has_is_an_error_per_key():
    with pytest.raises(LicSearchError, match=r"^resources.gpus_per_trial: 4, but the largest node of this "
                                             r"cluster has 2 GPUs$"):
        check_trial_fits(trial_needs(_Resources(1, 4)), [node(8, 2), node(8, 1)])
    with pytest.raises(LicSearchError, match=r"resources.cpus_per_trial: 16, but the largest node .* 8 CPUs"):
        check_trial_fits(trial_needs(_Resources(16, 0)), [node(8, 2), node(2, 0)])


def test_needs_that_fit_only_split_over_two_nodes_are_an_error():
    with pytest.raises(SpaceError, match=r"resources: cpus_per_trial 8 and gpus_per_trial 1 fit together on no "
                                         r"single node of this cluster \(nodes: 8 CPUs \+ 0 GPUs; 2 CPUs \+ 1 GPU\)"):
        check_trial_fits(trial_needs(_Resources(8, 1)), [node(8), node(2, 1)], "s.yaml")


def test_trials_that_fit_pass_including_fractional_gpus_and_ignoring_dead_nodes():
    check_trial_fits(trial_needs(_Resources(1, 0.25)), [node(2, 1)])
    check_trial_fits(trial_needs(_Resources(2, 1)), [node(1), node(2, 1)])
    check_trial_fits(trial_needs(_Resources(1, 0)), [node(1)])
    with pytest.raises(LicSearchError, match="no node of this cluster has a GPU"):
        check_trial_fits(trial_needs(_Resources(1, 1)), [node(2, 8, alive=False), node(2)])


# ---------------------------------------------------------------- the real command
def _gpu_space(folder: Path) -> Path:
    space = write_space(folder, "gpu_needed", {}, {}, {"type": "fifo"})
    text = space.read_text().replace("cpus_per_trial: 1", "cpus_per_trial: 1\n  gpus_per_trial: 1")
    space.write_text(text)
    return space


def _run_cli(folder: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(LIC_SEARCH + ["run", str(_gpu_space(folder)), "--storage-path", str(folder / "results"),
                                        "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", *extra],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    return done, time.monotonic() - started


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: the trial would fit")
def test_gpu_space_on_a_gpu_less_machine_exits_within_a_minute(tmp_path: Path):
    done, seconds = _run_cli(tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert NO_GPU in done.stderr and seconds < 60
    assert not (tmp_path / "results" / "gpu_needed").exists()  # nothing to clean up before a corrected run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gpu_less_cluster(tmp_path: Path):
    """`ray start --head` on a free port, one CPU, no GPU; stopped (its whole session) at the end.
    Yields (address, environment a driver needs: Ray's token authentication)."""
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = tmp_path / "head.log"
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--num-gpus=0", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             "--disable-usage-stats"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0", **auth})
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", auth
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the daemons it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


@pytest.mark.slow
def test_gpu_space_through_address_to_a_gpu_less_cluster_exits_within_a_minute(tmp_path: Path, gpu_less_cluster):
    address, auth = gpu_less_cluster
    done, seconds = _run_cli(tmp_path, "--address", address, env=auth)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert NO_GPU in done.stderr and seconds < 60
    assert "(1 node(s): 1 CPU + 0 GPUs)" in done.stderr
