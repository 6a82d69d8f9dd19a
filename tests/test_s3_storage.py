"""Results in S3-compatible storage: a real S3 HTTP server (moto's standalone server) reached through pyarrow and
Ray exactly as AWS would be (only the endpoint overridden, by AWS_ENDPOINT_URL). A search whose driver is killed
with SIGKILL continues with the same `run --resume-if-exists` and finishes; then status, best, report and
eval --search work from another folder with nothing but the bucket and the tracking store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from search.tracking import names as T
from search.tracking.client import client_for
from tests.conftest import SAMPLES
from tests.test_data_index import BROKEN, imagenet_tree
from tests.test_faults_and_clusters import LIC_SEARCH, free_port, kill_processes, kill_session, start, trial_runs, wait_for
from tests.test_search_e2e import write_space
from trainables import metrics as M

pytestmark = pytest.mark.slow
BUCKET = "lic"


@pytest.fixture
def s3(monkeypatch) -> str:
    """A moto S3 server on 127.0.0.1 with an empty bucket; this process and its children reach it as AWS."""
    server_module = pytest.importorskip("moto.server", reason="needs moto[server] (the `test` extra)")
    boto3 = pytest.importorskip("boto3", reason="needs boto3 (installed with moto)")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}/results"
    server.stop()


def objects(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def lic_search(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(LIC_SEARCH + args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})


@pytest.mark.timeout(2400)  # several driver starts, each seconds to a minute on a loaded 2-core machine
def test_a_search_in_s3_survives_a_driver_sigkill_and_is_read_back_from_another_folder(tmp_path: Path, s3: str):
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    (tmp_path / "tracking").mkdir()
    train = tmp_path / "train"
    imagenet_tree(train)  # two unreadable files among them: the skipped-image lists go to the bucket too
    space = write_space(tmp_path, "s3search", {"schedule.iterations": 60, "schedule.eval_every": 20,
                                               "model.auxt.enabled": False, "data.train": str(train),
                                               "schedule.lr": {"grid": [1e-3, 2e-3]}},
                        {"max_concurrent": 2}, {"type": "fifo"})
    job = tmp_path / "job"
    job.mkdir()
    command = LIC_SEARCH + ["run", str(space), "--storage-path", s3, "--tracking-uri", uri, "--resume-if-exists"]
    driver = start(command, tmp_path / "job1.log", cwd=job)
    instance: set[int] = set()
    try:
        def past_first_checkpoint() -> bool:
            return any(r.data.metrics.get(M.ITERATIONS, 0) >= 20 for r in trial_runs(uri, "s3search"))

        wait_for(past_first_checkpoint, 400, "a trial past its first checkpoint", interval=0.5)
        instance = {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: the next start ends the Ray instance it left
        driver.wait(timeout=30)
        assert any("/checkpoint_" in key and key.endswith(".pt") for key in objects("results/s3search/"))
        assert not list(job.rglob("lic_search.json"))  # nothing of the experiment folder was kept here

        second = lic_search(command[len(LIC_SEARCH):], cwd=job)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "continuing it" in second.stdout
    finally:
        kill_session(driver)
        kill_processes(instance)  # only the processes of the killed driver's own Ray instance
    keys = objects("results/s3search/")
    assert "results/s3search/lic_search.json" in keys and "results/s3search/space.yaml" in keys
    assert any(k.startswith("results/s3search/skipped_images/") for k in keys)
    runs = trial_runs(uri, "s3search")
    assert len(runs) == 2
    client = client_for(uri)
    for run in runs:
        assert run.data.tags[T.TAG_STATUS] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)]
        # The killed interval may be evaluated again, never more, and the history has each step once.
        assert steps == [20, 40, 60], steps

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = lic_search(["status", f"{s3}/s3search", "--json"], cwd=elsewhere, timeout=300)
    assert status.returncode == 0, status.stderr[-3000:]
    data = json.loads(status.stdout)
    assert data["finished"] and data["resume_command"] is None
    assert sorted(Path(p).name for p in data["skipped_files"]) == sorted(Path(b).name for b in BROKEN)
    by_name = lic_search(["status", "s3search", "--storage-path", s3], cwd=elsewhere, timeout=300)
    assert by_name.returncode == 0 and "The search finished: all 2 trials ended" in by_name.stdout, by_name.stdout

    best = lic_search(["best", "s3search", "--tracking-uri", uri, "--json"], cwd=elsewhere, timeout=300)
    assert best.returncode == 0, best.stderr[-3000:]
    assert {row["trial_id"] for row in json.loads(best.stdout)} <= {r.data.tags[T.TAG_TRIAL_ID] for r in runs}

    report = lic_search(["report", "s3search", "--tracking-uri", uri, "--out", str(elsewhere / "report")],
                        cwd=elsewhere, timeout=600)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (elsewhere / "report" / "report.md").is_file()

    swept = lic_search(["eval", "--search", "s3search", "--tracking-uri", uri, "--data", str(SAMPLES / "eval"),
                        "--max-images", "1", "--lof-iterations", "0,2", "--device", "cpu"], cwd=elsewhere, timeout=600)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    assert "lic-search-checkpoints" in swept.stdout  # the winner's checkpoint, downloaded from the bucket


def test_a_warm_start_from_the_bucket_is_verified_and_falls_back_to_the_older_checkpoint(tmp_path: Path, s3: str):
    """``model.init_from`` as an s3:// URI (a ladder's start point in a bucket): copied through pyarrow, its checksums
    checked; a tampered newest checkpoint gives way to the trial's older one, and with none left it is refused."""
    import pyarrow.fs
    import torch

    from tests.test_preemption import _config, _trial_checkpoints
    from trainables.training.engine import Trainer
    from trainables.training.warm_start import WarmStartError, read_source

    older, newest = _trial_checkpoints(tmp_path, [2, 4])
    bucket, _ = pyarrow.fs.FileSystem.from_uri(s3)
    trial = f"{BUCKET}/results/{older.parent.name}"
    pyarrow.fs.copy_files(str(older.parent), trial, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=bucket)
    remote_older, remote_newest = (f"s3://{trial}/{p.name}" for p in (older, newest))
    plain = _config()
    config = plain.model_copy(update={"model": plain.model.model_copy(update={"init_from": remote_newest})})
    assert Trainer(config).warm_start.source == f"{remote_newest}/state.pt"  # intact: the newest loads

    data = bytearray((newest / "state.pt").read_bytes())
    data[200:208] = b"\xff" * 8  # same size, other bytes: only the checksums tell
    with bucket.open_output_stream(f"{trial}/{newest.name}/state.pt") as stream:
        stream.write(bytes(data))
    trainer = Trainer(config)
    assert trainer.warm_start.source == f"{remote_older}/state.pt"
    saved = torch.load(older / "state.pt", weights_only=True)["model"]
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in saved.items() if loaded[k].shape == v.shape)

    with bucket.open_output_stream(f"{trial}/{older.name}/state.pt") as stream:
        stream.write(bytes(data[:100]))  # the older one truncated too: nothing left that verifies
    with pytest.raises(WarmStartError, match=r"no checkpoint of s3://.*checkpoint_000001 or its older ones loads: "
                                             r"s3://.*checkpoint_000001 fails its checksums.*checkpoint_000000 fails"):
        read_source(remote_newest)


@pytest.mark.timeout(1800)
def test_a_ladder_in_s3_fine_tunes_from_the_start_checkpoint_in_the_bucket(tmp_path: Path, s3: str):
    """A ladder on --storage-path s3://: ladder.json and every checkpoint in the bucket, the fine-tune started from
    the start point's checkpoint there (by URI), nothing in a local experiment folder; a driver SIGKILLed in the
    fine-tune phase continues from the bucket (`run --resume-if-exists`) without training the start point again."""
    import yaml

    from tests.test_ladder_space import ladder_space

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.iterations": 40}},
                         name="s3ladder", resources={"cpus_per_trial": 1, "max_failures": 0})
    data = yaml.safe_load(space.read_text())
    data["trial"]["loss"]["lmbda"] = {"grid": [0.013, 0.0483]}  # one family: the start point and one rate point
    data["trial"]["schedule"].update({"iterations": 4, "eval_every": 2, "lr": 1e-3})
    data["scheduler"] = {"type": "fifo"}
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    job = tmp_path / "job"
    job.mkdir()
    command = LIC_SEARCH + ["run", str(space), "--storage-path", s3, "--tracking-uri", uri, "--resume-if-exists"]
    driver = start(command, tmp_path / "job1.log", cwd=job)
    instance: set[int] = set()
    try:
        def fine_tuning() -> bool:
            return any(r.data.tags.get(T.TAG_LADDER) == T.LADDER_FINE_TUNE and r.data.metrics.get(M.ITERATIONS, 0) >= 6
                       for r in trial_runs(uri, "s3ladder"))

        wait_for(fine_tuning, 600, "the fine-tuned trial past its third checkpoint", interval=0.2)
        instance = {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        done = lic_search(command[len(LIC_SEARCH):], cwd=job, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "continuing it" in done.stdout and "ladder: 1 of 1 rate families fine-tune 1 trials" in done.stdout
    finally:
        kill_session(driver)
        kill_processes(instance)  # only the processes of the killed driver's own Ray instance

    keys = objects("results/s3ladder/")
    assert "results/s3ladder/ladder.json" in keys
    assert any(k.startswith("results/s3ladder/fine_tune/") and k.endswith("/state.pt") for k in keys)
    import boto3

    plan = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key="results/s3ladder/ladder.json")["Body"].read())
    (family,) = plan["families"]
    assert family["checkpoint"].startswith(f"{s3}/s3ladder/") and "/checkpoint_" in family["checkpoint"]
    assert f"{family['checkpoint'].removeprefix('s3://' + BUCKET + '/')}/state.pt" in keys
    runs = trial_runs(uri, "s3ladder")
    (fine,) = [r for r in runs if r.data.tags.get(T.TAG_LADDER) == T.LADDER_FINE_TUNE]
    (start_point,) = [r for r in runs if r.data.tags.get(T.TAG_LADDER) == T.LADDER_START]
    origin = json.loads(fine.data.tags[T.TAG_INIT_FROM])
    assert origin["checkpoint"] == family["checkpoint"] and origin["start_trial"] == start_point.data.tags[T.TAG_TRIAL_ID]
    assert fine.data.tags[T.TAG_STATUS] == "completed" and fine.data.metrics[M.INIT_LOADED_TENSORS] > 50
    assert not [p for p in job.rglob("*") if p.name in ("ladder.json", "lic_search.json", "state.pt")]

    assert len(runs) == 2  # the start point never trained again, the fine-tune continued in its own run
    client = client_for(uri)
    assert [m.step for m in client.get_metric_history(start_point.info.run_id, M.EVAL_RD_LOSS)] == [2, 4]
    # continued from its checkpoint in the bucket, not from zero: each step once in MLflow
    assert [m.step for m in client.get_metric_history(fine.info.run_id, M.EVAL_RD_LOSS)] == list(range(2, 42, 2))
    status = lic_search(["status", f"{s3}/s3ladder", "--json"], cwd=job, timeout=300)
    assert status.returncode == 0 and json.loads(status.stdout)["finished"], status.stdout[-3000:] + status.stderr
