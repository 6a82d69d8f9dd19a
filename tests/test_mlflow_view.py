"""The link `lic-search ui` prints: the search's saved MLflow UI view (grouped by rate point), the URL that opens it
in Model-training mode, and a quiet console (known third-party warnings filtered at the CLI entry)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from search.commands.ui import search_url
from search.tracking import names as T
from search.tracking import view
from search.tracking.queries import latest_search, select_search

REPO = Path(__file__).resolve().parents[1]


def _state(value: str) -> dict:
    envelope = json.loads(value)
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    return json.loads(envelope["state"])  # what MLflow's UI parses (plain JSON is one of its two encodings)


def test_view_tag_is_an_mlflow_saved_view_of_the_search_grouped_by_rate_point():
    key, value = view.view_tag("quickstart", "abc123", 1_765_000_000_000, param_keys=["schedule.lr"])
    assert key == "mlflow.sharedViewState.lic-search-abc123"
    assert json.loads(value)["name"].startswith("lic-search quickstart: trials by rate point (")
    state = _state(value)
    assert state["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc123'"
    assert state["groupBy"] == {"aggregateFunction": "min",
                                "groupByKeys": [{"mode": "tag", "groupByData": T.TAG_RATE_POINT}]}
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`eval/rd_loss`", True)
    assert state["selectedColumns"][0] == "metrics.`eval/rd_loss`"
    assert "params.`schedule.lr`" in state["selectedColumns"]
    psnr = _state(view.view_tag("s", "p", 0, metric="eval/psnr", mode="max")[1])
    assert (psnr["orderByKey"], psnr["orderByAsc"], psnr["groupBy"]["aggregateFunction"]) == (
        "metrics.`eval/psnr`", False, "max")


def test_runs_url_opens_model_training_mode_on_the_view():
    assert view.runs_url("http://127.0.0.1:5000", "7", "abc123") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=lic-search-abc123")
    assert view.ui_base("sqlite:////tmp/mlflow.db") == "http://127.0.0.1:5000"
    assert view.ui_base("sqlite:////tmp/mlflow.db", port=5123) == "http://127.0.0.1:5123"
    assert view.ui_base("http://mlflow-host:5000/") == "http://mlflow-host:5000"


def _recorded_search(uri: str, name: str, lambdas: tuple[float, ...]) -> str:
    """A search as MLflow holds it (parent run + trial runs), recorded before runs carried their rate point."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment(name) if client.get_experiment_by_name(name) is None else \
        client.get_experiment_by_name(name).experiment_id
    parent = client.create_run(experiment, run_name=name, tags={T.TAG_ROLE: T.ROLE_SEARCH}).info.run_id
    for i, lmbda in enumerate(lambdas):
        run = client.create_run(experiment, run_name=f"λ={lmbda} · lr={i}", tags={
            T.TAG_ROLE: T.ROLE_TRIAL, T.TAG_PARENT: parent, T.TAG_TRIAL_ID: f"t{i}"}).info.run_id
        client.log_param(run, "loss.lmbda", str(lmbda))
        client.log_param(run, "schedule.lr", str(0.001 * (i + 1)))
        client.log_param(run, "model.N", "8")
    return parent


def test_ui_url_writes_the_view_and_rate_points_of_a_search_recorded_before_views(tmp_path: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _recorded_search(uri, "rate", (0.0035, 0.013))
    latest = _recorded_search(uri, "rate", (0.0035, 0.013, 0.013))
    selection = latest_search(uri)
    assert (selection.experiment, selection.parent_run_id) == ("rate", latest)

    url = search_url(selection, "http://127.0.0.1:5000")
    assert url == (f"http://127.0.0.1:5000/#/experiments/{selection.experiment_id}/runs?"
                   f"workflowType=machine_learning&viewStateShareKey=lic-search-{latest}")
    client = MlflowClient(uri)
    state = _state(client.get_experiment(selection.experiment_id).tags[f"mlflow.sharedViewState.lic-search-{latest}"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{latest}'"
    assert "params.`schedule.lr`" in state["selectedColumns"] and "params.`model.N`" not in state["selectedColumns"]
    points = sorted(run.data.tags[T.TAG_RATE_POINT] for run in client.search_runs(
        [selection.experiment_id], f"tags.`{T.TAG_PARENT}` = '{latest}'"))
    assert points == ["λ=0.0035, distortion=mse", "λ=0.013, distortion=mse", "λ=0.013, distortion=mse"]

    # The first search gets its own view; a view already there is left as it is.
    client.set_experiment_tag(selection.experiment_id, f"mlflow.sharedViewState.lic-search-{latest}", "kept")
    assert search_url(select_search("rate", uri, first), "http://h").endswith(f"viewStateShareKey=lic-search-{first}")
    assert search_url(select_search("rate", uri), "http://h").endswith(f"viewStateShareKey=lic-search-{latest}")
    tags = client.get_experiment(selection.experiment_id).tags
    assert tags[f"mlflow.sharedViewState.lic-search-{latest}"] == "kept"
    assert _state(tags[f"mlflow.sharedViewState.lic-search-{first}"])["searchFilter"].endswith(f"'{first}'")


def test_ui_without_a_store_says_so(tmp_path: Path, capsys, monkeypatch):
    from search.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["ui"]) == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err


def test_validate_prints_no_warning_line_and_verbose_shows_them():
    command = [sys.executable, "-m", "search.cli", "validate", "spaces/quickstart.yaml", "--no-data-check"]
    quiet = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "Warning" not in quiet.stdout + quiet.stderr and "OK: spaces/quickstart.yaml is valid" in quiet.stdout
    loud = subprocess.run(command + ["--verbose"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "FutureWarning: `torch.jit.script` is deprecated" in loud.stderr


@pytest.mark.slow
def test_the_printed_url_opens_the_runs_table_in_headless_chromium(tmp_path: Path):
    """bench/ui_check.py on a tiny two-rate-point search: skipped with the reason where no Chromium is installed."""
    sys.path.insert(0, str(REPO / "bench"))
    import ui_check

    if ui_check.browser() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); bench/ui_check.py needs one")
    space = tmp_path / "tiny.yaml"
    text = (REPO / "docs" / "tour.yaml").read_text().replace("name: tour", "name: tiny")
    for old, new in (("iterations: 300", "iterations: 4"), ("eval_every: 50", "eval_every: 2"),
                     ("grace_period: 100", "grace_period: 2"), ("lr: {grid: [0.001, 0.003]}", "lr: 0.001"),
                     ("../samples", str(REPO / "samples"))):
        text = text.replace(old, new)
    space.write_text(text)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "ui_check.py"), "--space", str(space), "--workdir",
                           str(tmp_path / "work"), "--require-browser"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASS: the printed URL opens on the runs table of search 'tiny' in Model-training mode, grouped by rate " \
           "point (λ=0.0067, distortion=mse, λ=0.013, distortion=mse), all 4 trials listed" in done.stdout
