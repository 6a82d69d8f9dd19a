"""An sbatch script that runs a search under Slurm across as many jobs as it takes (``lic-search slurm``).

The script follows Ray's Slurm guide (``doc/source/cluster/vms/user-guides/community/slurm.md``): one task per
node with explicit CPU and GPU counts, ``ray start --head`` on the first node and ``ray start --address`` on
the others through ``srun``, each job with a fresh ``RAY_AUTH_TOKEN`` where the installed Ray authenticates
by token. The driver runs ``lic-search run SPACE --resume-if-exists`` against that cluster, with a storage
path and tracking URI every node reaches. Slurm signals the batch shell before the time limit
(``--signal=B:TERM@<warning>``); the script passes the signal to the driver, which checkpoints every running
trial and exits 75 (:mod:`search.tuning.interrupt`); the script then requeues its own job, and the next job
continues the search. A finished search (exit 0 or 3) is not requeued.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from packaging.version import Version

from search.errors import LicSearchError
from search.space import SearchSpec
from search.tuning.resource_check import check_trial_fits, check_workers_fit, trial_needs

TIME_PATTERN = r"^(\d+-)?\d+(:\d{2}){0,2}$"  # Slurm's --time: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


@dataclass
class JobShape:
    """What each job asks Slurm for, and where the search keeps its results."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: Optional[int] = None  # None: what the trials that fit a node's GPUs (or one trial) need
    time: str = "24:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    warning_seconds: int = 120  # Slurm's --signal=B:TERM@<this>: the driver's time to checkpoint and exit
    storage_path: str = "lic_search_results"
    tracking_uri: Optional[str] = None


def node_cpus(spec: SearchSpec, shape: JobShape) -> int:
    """CPUs per node: as given, else enough for the trials a node's GPUs hold (one trial on a CPU node)."""
    if shape.cpus_per_node is not None:
        return shape.cpus_per_node
    resources = spec.file.resources
    per_trial_gpus = resources.gpus_per_trial / resources.workers_per_trial
    per_trial_cpus = resources.cpus_per_trial / resources.workers_per_trial
    trials = max(1, math.floor(shape.gpus_per_node / per_trial_gpus + 1e-9)) if per_trial_gpus > 0 else 1
    return max(1, math.ceil(trials * per_trial_cpus))


def check_shape(spec: SearchSpec, shape: JobShape) -> None:
    """Refuse a job no trial of the space can run in (the same checks ``run`` makes against a live cluster)."""
    if shape.nodes < 1 or shape.gpus_per_node < 0:
        raise LicSearchError(f"--nodes {shape.nodes} --gpus-per-node {shape.gpus_per_node}: need at least 1 node "
                             "and 0 or more GPUs per node")
    if not re.match(TIME_PATTERN, shape.time):
        raise LicSearchError(f"--time {shape.time!r}: use Slurm's format, e.g. 48:00:00, 2-00:00:00 or 90 (minutes)")
    cpus = node_cpus(spec, shape)
    nodes = [{"Resources": {"CPU": float(cpus), "GPU": float(shape.gpus_per_node)}, "Alive": True}] * shape.nodes
    resources = spec.file.resources
    where = str(spec.path)
    try:
        if resources.workers_per_trial > 1:
            from search.tuning.worker_groups import worker_group

            group = worker_group(resources)
            check_workers_fit(group.workers, group.worker_resources(), nodes, where)
        else:
            check_trial_fits(trial_needs(resources), nodes, where)
    except LicSearchError as error:
        raise LicSearchError(f"{error} (a job of {shape.nodes} node(s) with {cpus} CPUs and "
                             f"{shape.gpus_per_node} GPUs each: change --nodes/--gpus-per-node/--cpus-per-node)") \
            from None


def token_auth() -> bool:
    """Whether the installed Ray authenticates by token (``RAY_AUTH_MODE=token``, Ray >= 2.52)."""
    return Version(metadata.version("ray")) >= Version("2.52")


def sbatch_script(spec: SearchSpec, space: Path, shape: JobShape) -> str:
    """The script, checked against the space first (:func:`check_shape`)."""
    check_shape(spec, shape)
    q = shlex.quote
    cpus, gpus = node_cpus(spec, shape), shape.gpus_per_node
    python = sys.executable
    ray = str(Path(python).parent / "ray")
    storage = shape.storage_path if "://" in shape.storage_path else str(Path(shape.storage_path).resolve())
    tracking = shape.tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
    name = spec.name
    lines = [
        "#!/bin/bash",
        f"# lic-search {name}: runs `lic-search run --resume-if-exists` until the search finishes, one job at a",
        "# time: each job starts Ray on its nodes, stops the search at the time limit's warning (checkpointing",
        "# every running trial) and requeues itself; the next job continues the search.",
        f"#SBATCH --job-name=lic-{name}",
        f"#SBATCH --nodes={shape.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={cpus}",
        *([f"#SBATCH --gpus-per-task={gpus}"] if gpus else []),
        f"#SBATCH --time={shape.time}",
        *([f"#SBATCH --partition={shape.partition}"] if shape.partition else []),
        *([f"#SBATCH --account={shape.account}"] if shape.account else []),
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:TERM@{shape.warning_seconds}",
        f"#SBATCH --output=lic-{name}-%j.out",
        "#SBATCH --open-mode=append",
        "",
        "set -uo pipefail",
        f"SPACE={q(str(space.resolve()))}",
        f"STORAGE={q(storage)}",
        f"TRACKING={q(tracking)}",
        f"PYTHON={q(python)}",
        f"RAY={q(ray)}",
        "# a free port on the head node (this script runs there): two jobs sharing a node never meet",
        "PORT=$(\"$PYTHON\" -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])')",
        "export PYTHONUNBUFFERED=1",
    ]
    if token_auth():
        lines += ["# a fresh token per job: only this job's processes join its Ray cluster",
                  "export RAY_AUTH_MODE=token",
                  "export RAY_AUTH_TOKEN=$(\"$PYTHON\" -c 'import secrets; print(secrets.token_hex(32))')"]
    lines += [
        "",
        "nodes=($(scontrol show hostnames \"$SLURM_JOB_NODELIST\"))",
        "head=${nodes[0]}",
        "head_ip=$(srun --nodes=1 --ntasks=1 -w \"$head\" hostname --ip-address | awk '{print $1}')",
        f"echo \"job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}): Ray head on $head ($head_ip:$PORT), "
        f"{shape.nodes} node(s)\"",
        "# setsid: Slurm signals the batch shell's whole process group (B:): only this shell may get it",
        f"setsid srun --nodes=1 --ntasks=1 -w \"$head\" \"$RAY\" start --head --node-ip-address=\"$head_ip\" "
        f"--port=$PORT --num-cpus={cpus} --num-gpus={gpus} --include-dashboard=false --block &",
        "sleep 10",
        "for node in \"${nodes[@]:1}\"; do",
        f"    setsid srun --nodes=1 --ntasks=1 -w \"$node\" \"$RAY\" start --address=\"$head_ip:$PORT\" "
        f"--num-cpus={cpus} --num-gpus={gpus} --block &",
        "done",
        "for _ in $(seq 60); do \"$RAY\" status --address=\"$head_ip:$PORT\" >/dev/null 2>&1 && break; sleep 2; done",
        "",
        "setsid \"$PYTHON\" -m search.cli run \"$SPACE\" --address \"$head_ip:$PORT\" --storage-path \"$STORAGE\" "
        "--tracking-uri \"$TRACKING\" --resume-if-exists &",
        "driver=$!",
        "# Slurm's warning before the time limit (and scancel --signal) reaches this shell: pass it to the driver,",
        "# which checkpoints every running trial and exits 75 (stopped, unfinished).",
        "trap 'kill -TERM $driver 2>/dev/null' TERM USR1 USR2",
        "wait $driver; code=$?",
        "while kill -0 $driver 2>/dev/null; do wait $driver; code=$?; done",
        "echo \"lic-search exited $code\"",
        "# 75: stopped unfinished. Above 128: the driver was killed by a signal (the job's end came while it was",
        "# starting or closing): the next job continues the search, or says it finished. 0, 2, 3: done.",
        "if [ \"$code\" -eq 75 ] || [ \"$code\" -gt 128 ]; then",
        "    echo \"search unfinished: requeueing job $SLURM_JOB_ID\"",
        "    scontrol requeue \"$SLURM_JOB_ID\"",
        "fi",
        "exit $code",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["JobShape", "sbatch_script", "check_shape", "node_cpus", "token_auth"]
