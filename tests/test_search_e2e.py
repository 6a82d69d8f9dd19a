"""End to end on the real stack: a Ray local cluster, ASHA, the MLflow store, CompressAI models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from search import mlflow_names as T
from search.cli import main
from search.queries import best_trials, trial_runs
from tests.conftest import SAMPLES
from trainables import metrics as M

pytestmark = pytest.mark.slow


def write_space(folder: Path, name: str, trial_overrides: dict, search: dict, scheduler: dict) -> Path:
    space = {
        "name": name,
        "trial": {
            "model": {"backbone": "mbt2018-mean", "N": 8, "M": 8, "auxt": {"enabled": {"grid": [True, False]}}},
            "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64,
                     "batch_size": 2, "num_workers": 0, "max_eval_images": 2},
            "loss": {"lmbda": 0.013},
            "schedule": {"iterations": 6, "eval_every": 2, "lr": 1e-3, "seed": 0},
        },
        "search": search,
        "scheduler": scheduler,
        "resources": {"cpus_per_trial": 1, "max_failures": 0},
    }
    for dotted, value in trial_overrides.items():
        node = space["trial"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_asha_search_records_every_trial_in_mlflow(tmp_path: Path, ray_cluster, capsys):
    from search.tuner import run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A good and a hopeless learning rate: run one at a time so ASHA has a rung record to compare with.
    space = write_space(tmp_path, "e2e", {"schedule.lr": {"grid": [3e-3, 1e-9]}},
                        {"max_concurrent": 1}, {"type": "asha", "grace_period": 2, "reduction_factor": 2})
    results, folder = run_search(space, tmp_path / "results", tracking_uri=uri)
    assert len(results) == 4 and not any(r.error for r in results)

    runs = trial_runs("e2e", uri)
    assert len(runs) == 4
    statuses = sorted(r.data.tags[T.TAG_STATUS] for r in runs)
    assert "stopped" in statuses and "completed" in statuses
    assert {r.data.tags[T.TAG_AUXT] for r in runs} == {"both", "off"}
    parents = {r.data.tags[T.TAG_PARENT] for r in runs}
    assert len(parents) == 1

    from search.tracking import client_for

    client = client_for(uri)
    for run in runs:
        assert run.data.params["model.backbone"] == "mbt2018-mean"
        history = client.get_metric_history(run.info.run_id, M.EVAL_RD_LOSS)
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and steps[0] == 2
        if run.data.tags[T.TAG_STATUS] == "completed":
            assert steps == [2, 4, 6]
        else:
            assert steps[-1] < 6 and "stopped by the scheduler" in run.data.tags[T.TAG_STATUS_DETAIL]
        assert all(math.isfinite(m.value) for m in history)
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert T.ARTIFACT_TRIAL_CONFIG in artifacts

    capsys.readouterr()  # drop what the search printed
    assert main(["best", "e2e", "--tracking-uri", uri, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 4 and {"run_id", "params", "metrics"} <= set(listed[0])
    values = [row["metrics"][M.EVAL_RD_LOSS] for row in listed]
    assert values == sorted(values)
    assert best_trials("e2e", tracking_uri=uri, top=1)[0]["params"]["schedule.lr"] == "0.003"


def test_report_of_a_real_search_has_plots_tables_and_mlflow_artifacts(tmp_path: Path, ray_cluster):
    from search.tracking import client_for
    from search.tuner import run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Two rate families (AuxT on/off) of four λ each: BD-rate curves and an AuxT speed pair.
    space = write_space(tmp_path, "fam", {"loss.lmbda": {"grid": [0.0067, 0.013, 0.025, 0.0483]},
                                          "schedule.iterations": 4},
                        {"max_concurrent": 2}, {"type": "fifo"})
    results, _ = run_search(space, tmp_path / "results", tracking_uri=uri)
    assert len(results) == 8 and not any(r.error for r in results)

    out = tmp_path / "report"
    assert main(["report", "fam", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "8 trials: 8 completed" in text
    assert "## Rate families and BD-rate" in text and "## Training speed: AuxT against no AuxT" in text
    family_rows = [line for line in text.splitlines() if line.startswith("| F")]
    assert len(family_rows) >= 2 and all("| 4 |" in row for row in family_rows[:2])
    assert "_No pair of families" not in text  # the AuxT pair was found
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert pictures == ["convergence.png", "energy.png", "rd_ms_ssim.png", "rd_psnr.png"]
    for picture in pictures:
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = client_for(uri)
    parent = client.search_runs([client.get_experiment_by_name("fam").experiment_id],
                                filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}'")[0]
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in pictures + ["report.md"]} <= attached


def test_storage_uri_and_resuming_a_finished_search_changes_nothing(tmp_path: Path, ray_cluster):
    from search.tuner import resume_search, run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, "uri", {"schedule.iterations": 2}, {"max_concurrent": 2}, {"type": "fifo"})
    storage = f"file://{tmp_path / 'remote'}"  # any pyarrow filesystem URI: s3://, gs://, ...
    results, location = run_search(space, storage, tracking_uri=uri)
    assert location == f"{storage}/uri" and len(results) == 2
    assert (tmp_path / "remote" / "uri" / "lic_search.json").is_file()
    again, _ = resume_search(location)
    assert len(again) == 2 and not any(r.error for r in again)
    runs = trial_runs("uri", uri)
    assert len(runs) == 2 and {r.data.tags[T.TAG_STATUS] for r in runs} == {"completed"}
