"""`lic-search slurm` on a real one-node Slurm cluster (Debian's slurm-wlm and munge, started here as root):
a search longer than a job's time limit finishes across requeued jobs, each trial with one continuous MLflow
history and no iteration trained twice. Also what the generated script asks Slurm for, and what it refuses."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from search.tracking import names as T
from search.tracking.client import client_for
from tests.test_faults_and_clusters import LIC_SEARCH, free_port, trial_runs, wait_for
from tests.test_job_end import attempts
from tests.test_search_e2e import write_space
from trainables import metrics as M

DAEMONS = ("munged", "slurmctld", "slurmd")


def slurm_config(folder: Path) -> Path:
    host = socket.gethostname()
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    config = folder / "slurm.conf"
    config.write_text("\n".join([
        "ClusterName=lic", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={folder}/munge/munge.socket",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        # what runs in a container without cgroup delegation (tried here: jobs get their signals on time)
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "JobRequeue=1", "KillWait=30",
        "ReturnToService=2", "MpiDefault=none",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    return config


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster of this machine (munged, slurmctld, slurmd as root); yields the environment."""
    missing = [d for d in (*DAEMONS, "sbatch") if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        pytest.skip(f"needs Slurm and munge (apt-get install slurm-wlm munge; .ci/run does): {', '.join(missing)} "
                    f"not found")
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm cluster runs its daemons as root")
    if not Path("/etc/munge/munge.key").is_file():
        pytest.skip("needs /etc/munge/munge.key (installed by the munge package)")
    folder = tmp_path_factory.mktemp("slurm")
    config = slurm_config(folder)
    env = {**os.environ, "SLURM_CONF": str(config)}
    subprocess.run(["munged", f"--socket={folder}/munge/munge.socket", f"--pid-file={folder}/munge/munged.pid",
                    f"--log-file={folder}/munge/munged.log", f"--seed-file={folder}/munge/seed",
                    "--key-file=/etc/munge/munge.key", "-f"], check=True, env=env)
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([daemon, "-f", str(config), "-c"], check=True, env=env)
    try:
        wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                                  env=env).stdout, 60, "the Slurm node idle", interval=1)
    except AssertionError:
        logs = "".join(p.read_text()[-2000:] for p in folder.glob("*.log"))
        _stop(folder, env)
        pytest.skip(f"slurmd did not come up on this machine: {logs}")
    yield env
    _stop(folder, env)


def _stop(folder: Path, env: dict) -> None:
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
    for pid_file in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (OSError, ValueError):
            pass


def test_the_script_asks_for_the_spaces_resources_and_refuses_what_no_node_shape_runs(tmp_path: Path):
    space = Path(__file__).resolve().parents[1] / "spaces" / "ablation_components.yaml"
    made = subprocess.run(LIC_SEARCH + ["slurm", str(space), "--nodes", "2", "--gpus-per-node", "8", "--time",
                                        "48:00:00", "--tracking-uri", "http://mlflow:5000", "--storage-path",
                                        "s3://bucket/results"], capture_output=True, text=True, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    script = made.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-task=8", "#SBATCH --cpus-per-task=32",
                 "#SBATCH --time=48:00:00", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@120",
                 "STORAGE=s3://bucket/results", "TRACKING=http://mlflow:5000", "--resume-if-exists",
                 "scontrol requeue", "start --head", "--num-gpus=8"):
        assert line in script, line
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    refused = subprocess.run(LIC_SEARCH + ["slurm", str(space), "--nodes", "4", "--time", "1:00:00"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "resources.gpus_per_trial: 1, but no node" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(2400)  # several driver starts, each seconds to a minute on a loaded 2-core machine
def test_a_search_longer_than_a_job_finishes_across_requeued_jobs(tmp_path: Path, slurm: dict):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # How long this takes varies twentyfold with the machine's load: the job's time limit ends the first job on a
    # busy machine; on a quiet one the test sends the same warning (`scancel --batch --signal=TERM`, what
    # `--signal=B:TERM@60` does) once the first job has checkpointed, so there are always at least two jobs.
    space = write_space(tmp_path, "queued", {"schedule.iterations": 600, "schedule.eval_every": 100,
                                             "data.batch_size": 8, "model.auxt.enabled": False,
                                             "schedule.lr": {"grid": [1e-3, 2e-3]}},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results = tmp_path / "results"
    script = tmp_path / "queued.sbatch"
    # Jobs of 4 minutes, the warning 60 s before their end.
    made = subprocess.run(LIC_SEARCH + ["slurm", str(space), "--cpus-per-node", str(os.cpu_count()), "--time",
                                        "00:04:00", "--signal-seconds", "60", "--storage-path", str(results),
                                        "--tracking-uri", uri, "--output", str(script), "--submit"],
                          capture_output=True, text=True, cwd=tmp_path, env=slurm)
    assert made.returncode == 0, made.stdout + made.stderr
    job = re.search(r"Submitted batch job (\d+)", made.stdout).group(1)
    output = tmp_path / f"lic-queued-{job}.out"
    wait_for(lambda: list((results / "queued").glob("*/checkpoint_*")), 900, "the first job's first checkpoint",
             interval=0.5)
    if "lic-search exited" not in output.read_text():  # the first job still runs: its warning, now
        subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=slurm, check=True)

    def done() -> bool:
        queue = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, env=slurm)
        if "BeginTime" in queue.stdout:  # Slurm delays a requeued job by 2 minutes: no need to wait for that here
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, capture_output=True)
        return not queue.stdout.strip() and output.is_file() and "lic-search exited" in output.read_text()

    wait_for(done, 1800, f"Slurm job {job} to finish the search", interval=3)
    text = output.read_text()
    exits = re.findall(r"lic-search exited (\d+)", text)
    # Every job but the last stopped unfinished (75), or was signalled while its driver was closing a search that
    # had just finished (143: requeued too, and the next job says the search finished).
    assert exits[-1] == "0" and "75" in exits and set(exits[:-1]) <= {"75", "143"}, text[-4000:]
    assert "requeueing job" in text

    trials = attempts(results / "queued")
    assert len(trials) == 2
    for trial, parts in trials.items():
        iterations = [r[M.ITERATIONS] for p in parts for r in p if not M.is_notice(r)]  # trained
        assert iterations == sorted(set(iterations)) and iterations[-1] == 600, (trial, iterations)
        for ended, next_attempt in zip(parts, parts[1:]):
            assert next_attempt[0][M.RESTORED_AT] == ended[-1][M.ITERATIONS]  # no iteration trained twice
    runs = trial_runs(uri, "queued")
    assert len(runs) == 2
    client = client_for(uri)
    for run in runs:
        assert run.data.tags[T.TAG_STATUS] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
        assert steps == list(range(100, 601, 100)), steps
    print(f"{len(exits)} jobs: exits {', '.join(exits)}")
