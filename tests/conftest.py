"""Shared fixtures: tiny configs on the shipped sample crops, one torch thread per test, a local
Ray instance per module (``ray_cluster``), the Ray CLI of this interpreter, and ../shared when present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "kodak-crops"
SHARED = REPO.parent / "shared"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import torch  # noqa: E402

#: The ``ray`` CLI installed beside this interpreter: tests pass from an unactivated venv
#: (``venv/bin/python -m pytest``), where ``ray`` is not on PATH.
RAY_CLI = str(Path(sys.executable).parent / "ray")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on 2 cores: a second intra-op thread only adds contention (tiny TCM passes ran
    ~35x slower with 2 threads on a loaded machine). Set before every test, so a test that changes
    it (resource limits) cannot slow the rest. Ray trials set their own thread count."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def restored_environment():
    """Each test ends with the environment it started with: an in-process ``run`` sets Ray's and MLflow's
    variables for a quiet console (:func:`search.monitor.console.configure`), which a later test's child
    process (``lic-search run --verbose``) would otherwise inherit, depending on which tests shared this
    process before it (the suite runs modules on two worker processes)."""
    before = dict(os.environ)
    yield
    for name in set(os.environ) - set(before):
        del os.environ[name]
    os.environ.update(before)


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local 2-CPU Ray instance for the tests of one module (started unless one is running).

    The test module is pickled by value: Ray workers cannot import test modules, so trainables
    defined in a test file reach the workers this way."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(request.module)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def tiny_trial(**overrides) -> dict:
    """A trial config small enough to train a few iterations in well under a second each."""
    config = {
        "model": {"backbone": "mbt2018-mean", "N": 8, "M": 8, "auxt": {"enabled": True}},
        "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64,
                 "batch_size": 2, "num_workers": 0, "max_eval_images": 2},
        "loss": {"lmbda": 0.013},
        "schedule": {"iterations": 6, "eval_every": 3, "lr": 1e-3, "seed": 0},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared material beside the checkout ({SHARED}), absent here")
    return SHARED
