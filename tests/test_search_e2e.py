"""End to end on the real stack: a Ray local cluster, ASHA, the MLflow store, CompressAI models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.tracking import names as T
from search.tracking.queries import best_trials, trial_runs
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
    from search.tuning.tuner import run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A good and a hopeless learning rate: run one at a time so ASHA has a rung record to compare with.
    space = write_space(tmp_path, "e2e", {"schedule.lr": {"grid": [3e-3, 1e-9]}},
                        {"max_concurrent": 1}, {"type": "asha", "grace_period": 2, "reduction_factor": 2})
    outcome = run_search(space, tmp_path / "results", tracking_uri=uri)
    results, folder = outcome.results, outcome.folder
    assert len(results) == 4 and not any(r.error for r in results)

    runs = trial_runs("e2e", uri)
    assert len(runs) == 4
    statuses = sorted(r.data.tags[T.TAG_STATUS] for r in runs)
    assert "stopped" in statuses and "completed" in statuses
    assert {r.data.tags[T.TAG_AUXT] for r in runs} == {"both", "off"}
    parents = {r.data.tags[T.TAG_PARENT] for r in runs}
    assert len(parents) == 1

    from search.tracking.client import client_for

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
        # each evaluation's per-image values: one table per evaluated step, its mean the logged eval/rd_loss
        tables = sorted(a.path for a in client.list_artifacts(run.info.run_id, M.PER_IMAGE_FOLDER))
        assert tables == [M.per_image_artifact(step) for step in steps]
        text = Path(client.download_artifacts(run.info.run_id, tables[-1], str(tmp_path))).read_text()
        table = M.PerImage.from_json(text)
        assert len(table.names) == 2 and all(name.endswith(".png") for name in table.names)
        assert sum(table.columns["rd_loss"]) / 2 == pytest.approx(history[-1].value, rel=1e-6)
        journal = (Path(folder) / "tracking_journal.jsonl").read_text()
        assert f'"artifact": "{tables[-1]}"' in journal  # through the journal, in the experiment folder

    capsys.readouterr()  # drop what the search printed
    assert main(["best", "e2e", "--tracking-uri", uri, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 4 and {"run_id", "params", "metrics"} <= set(listed[0])
    values = [row["metrics"][M.EVAL_RD_LOSS] for row in listed]
    assert values == sorted(values)
    assert best_trials("e2e", tracking_uri=uri, top=1)[0]["params"]["schedule.lr"] == 0.003  # typed, not "0.003"


def test_report_of_a_real_search_has_plots_tables_and_mlflow_artifacts(tmp_path: Path, ray_cluster):
    from search.tracking.client import client_for
    from search.tuning.tuner import run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Two rate families (AuxT on/off) of four λ each: BD-rate curves and an AuxT speed pair.
    space = write_space(tmp_path, "fam", {"loss.lmbda": {"grid": [0.0067, 0.013, 0.025, 0.0483]},
                                          "schedule.iterations": 4},
                        {"max_concurrent": 2}, {"type": "fifo"})
    outcome = run_search(space, tmp_path / "results", tracking_uri=uri)
    results = outcome.results
    assert len(results) == 8 and not any(r.error for r in results)

    out = tmp_path / "report"
    assert main(["report", "fam", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "8 trials: 8 completed" in text
    assert "## Rate savings against the baseline" in text and "## Training speed: AuxT against no AuxT" in text
    family_rows = [line for line in text.splitlines() if line.startswith("| F")]
    assert len(family_rows) >= 2 and all("| 4 |" in row for row in family_rows[:2])
    assert "_No pair of families" not in text  # the AuxT pair was found
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert pictures == ["convergence.png", "energy.png", "rd_ms_ssim.png", "rd_psnr.png", "schedule.png"]
    for picture in pictures:
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = client_for(uri)
    parent = client.search_runs([client.get_experiment_by_name("fam").experiment_id],
                                filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}'")[0]
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in pictures + ["report.md"]} <= attached


def test_storage_uri_and_resuming_a_finished_search_changes_nothing(tmp_path: Path, ray_cluster):
    from search.tuning.tuner import resume_search, run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, "uri", {"schedule.iterations": 2}, {"max_concurrent": 2}, {"type": "fifo"})
    storage = f"file://{tmp_path / 'remote'}"  # any pyarrow filesystem URI: s3://, gs://, ...
    outcome = run_search(space, storage, tracking_uri=uri)
    results, location = outcome.results, outcome.folder
    assert location == f"{storage}/uri" and len(results) == 2
    assert (tmp_path / "remote" / "uri" / "lic_search.json").is_file()
    outcome = resume_search(location)
    assert outcome.results is None  # every trial had ended: resume trains nothing (no Ray started)
    runs = trial_runs("uri", uri)
    assert len(runs) == 2 and {r.data.tags[T.TAG_STATUS] for r in runs} == {"completed"}


@pytest.fixture(scope="module")
def two_lambda(tmp_path_factory, ray_cluster):
    """A real search (AuxT on/off × λ ∈ {0.0035, 0.0483}) run through the CLI, then a second search
    with the same name (another results folder) so that the name holds two searches."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("two-lambda")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    space = write_space(folder, "rate", {"loss.lmbda": {"grid": [0.0035, 0.0483]}, "schedule.iterations": 4},
                        {"max_concurrent": 2}, {"type": "fifo"})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(space), "--storage-path", str(folder / "results"), "--tracking-uri", uri]) == 0
    first = printed.getvalue()
    again = write_space(folder, "rate", {"schedule.iterations": 2, "model.auxt.enabled": False},
                        {"max_concurrent": 1}, {"type": "fifo"})
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(again), "--storage-path", str(folder / "elsewhere"), "--tracking-uri", uri]) == 0
    return {"uri": uri, "summary": first, "folder": folder}


def test_summary_prints_one_best_line_per_rate_point(two_lambda):
    lines = [line for line in two_lambda["summary"].splitlines() if line.startswith("best at ")]
    assert [line.split(":")[0] for line in lines] == ["best at λ=0.0035, distortion=mse",
                                                      "best at λ=0.0483, distortion=mse"]
    assert all(f"{M.EVAL_RD_LOSS} = " in line and "at 4 iterations" in line for line in lines)


def test_summary_links_the_search_view_grouped_by_rate_point(two_lambda):
    """The end of a search prints the URL of its runs (Model-training mode, its saved view), and MLflow holds the
    view (the journal's parent-run placeholder replaced) and every trial's rate point to group by."""
    from search.tracking.client import client_for

    uri = two_lambda["uri"]
    first = client_parents(uri, "rate")[-1]
    client = client_for(uri)
    experiment = client.get_experiment_by_name("rate")
    assert (f"MLflow UI:   http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?"
            f"workflowType=machine_learning&viewStateShareKey=lic-search-{first}   (served by lic-search ui)"
            in two_lambda["summary"].splitlines())
    assert f"lic-search ui rate --tracking-uri {uri} --open" in two_lambda["summary"]
    envelope = json.loads(experiment.tags[f"mlflow.sharedViewState.lic-search-{first}"])
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{first}'"
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": T.TAG_RATE_POINT}]
    assert "params.`model.auxt.enabled`" in state["selectedColumns"]
    runs = client.search_runs([experiment.experiment_id], f"tags.`{T.TAG_PARENT}` = '{first}'")
    assert sorted(r.data.tags[T.TAG_RATE_POINT] for r in runs) == [
        "λ=0.0035, distortion=mse"] * 2 + ["λ=0.0483, distortion=mse"] * 2


def test_best_json_has_a_rank_1_trial_per_lambda_of_the_latest_search_only(two_lambda, capsys):
    from search.tracking.queries import select_search

    capsys.readouterr()
    assert main(["best", "rate", "--tracking-uri", two_lambda["uri"], "--json", "--all"]) == 0
    everything = json.loads(capsys.readouterr().out)
    first = [r for r in everything if r["params"]["schedule.iterations"] == 4]
    assert len(everything) == 5 and len(first) == 4
    winners = sorted((r["stratum"]["loss.lmbda"], r["stratum"]["loss.distortion"]) for r in first if r["rank"] == 1)
    assert winners == [(0.0035, "mse"), (0.0483, "mse")]
    for row in first:  # the rank-1 trial of each λ has the lowest R-D loss of that λ
        rivals = [r["metrics"][M.EVAL_RD_LOSS] for r in first if r["stratum"] == row["stratum"]]
        assert (row["rank"] == 1) == (row["metrics"][M.EVAL_RD_LOSS] == min(rivals))
        assert isinstance(row["params"]["model.auxt.enabled"], bool)

    capsys.readouterr()
    assert main(["best", "rate", "--tracking-uri", two_lambda["uri"], "--json"]) == 0
    captured = capsys.readouterr()
    latest = json.loads(captured.out)
    assert [(r["params"]["schedule.iterations"], r["rank"]) for r in latest] == [(2, 1)]
    parent = select_search("rate", two_lambda["uri"]).parent_run_id
    assert f"parent run {parent}; 1 earlier search" in captured.err and latest[0]["parent_run_id"] == parent
    assert {r["parent_run_id"] for r in first} != {parent}


def test_best_by_family_on_single_point_families_prints_a_table(two_lambda, capsys):
    searches = client_parents(two_lambda["uri"], "rate")
    capsys.readouterr()
    assert main(["best", "rate", "--tracking-uri", two_lambda["uri"], "--by", "family", "--run-id",
                 searches[-1]]) == 0  # the first search: two families of two λ each
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("rank") and len(out) == 3
    assert all("2 rate points; BD-rate needs at least 4" in line or "baseline" in line for line in out[1:]), out
    assert main(["best", "rate", "--tracking-uri", two_lambda["uri"], "--by", "family"]) == 0  # one 1-point family
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("baseline")  # the one family is the baseline: never ranked against itself


def client_parents(uri: str, name: str) -> list[str]:
    """Parent run ids of the searches named ``name``, latest first."""
    from search.tracking.client import client_for

    client = client_for(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}'",
                              order_by=["attributes.start_time DESC"])
    return [r.info.run_id for r in runs]

