"""`lic-search best` on hand-built MLflow searches: best per rate point, one search at a time, families, export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.space import load_space
from search.space.strata import parse_param
from search.tracking import names as T
from tests.conftest import SAMPLES, tiny_trial
from trainables import metrics as M
from trainables.config import flatten

LOW, HIGH = 0.0035, 0.0483


def _search(client, experiment_id: str, stratify_by: list[str] | None = None) -> str:
    tags = {T.TAG_ROLE: T.ROLE_SEARCH}
    if stratify_by is not None:
        tags[T.TAG_STRATIFY_BY] = json.dumps(stratify_by)
    run_id = client.create_run(experiment_id, run_name="s", tags=tags).info.run_id
    time.sleep(0.01)  # distinct start times: "latest" is well defined
    return run_id


def _trial(client, experiment_id: str, parent: str, trial_id: str, config: dict, rd_loss: float | None,
           bpp: float = 0.5, psnr: float = 30.0) -> str:
    from mlflow.entities import Metric, Param

    from search.space.strata import family_key

    run = client.create_run(experiment_id, run_name=trial_id, tags={  # the tags tracking.py writes
        T.TAG_PARENT: parent, T.TAG_ROLE: T.ROLE_TRIAL, T.TAG_TRIAL_ID: trial_id,
        T.TAG_STATUS: T.STATUS_COMPLETED if rd_loss is not None else T.STATUS_ERRORED,
        T.TAG_FAMILY: family_key(config),
        T.TAG_FAMILY_NAME: f"auxt={'haar' if config['model']['auxt']['enabled'] else 'off'} · lr={config['schedule']['lr']:g}"})
    metrics = {M.ITERATIONS: 6.0}
    if rd_loss is not None:  # an errored trial has no eval metrics
        metrics.update({M.EVAL_RD_LOSS: rd_loss, M.EVAL_BPP: bpp, M.EVAL_PSNR: psnr})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(flatten(config).items())],
                     metrics=[Metric(k, v, now, 6) for k, v in metrics.items()])
    client.log_text(run.info.run_id, yaml.safe_dump(config, sort_keys=False), T.ARTIFACT_TRIAL_CONFIG)
    return run.info.run_id


def _config(lmbda: float, auxt: bool, lr: float = 1e-3) -> dict:
    config = tiny_trial(**{"loss.lmbda": lmbda, "model.auxt.enabled": auxt, "schedule.lr": lr})
    config["schedule"]["milestones"] = [0.9]
    return config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Search "ab" twice: an old search (one trial) and the latest, AuxT on/off × two λ.

    R-D losses grow with λ, so a flat ranking would put both low-λ trials first; within each λ
    AuxT wins at the low λ and loses at the high one."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("best")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("ab", artifact_location=(folder / "artifacts").as_uri())
    old = _search(client, experiment_id)  # recorded before stratify keys were: falls back to the default
    _trial(client, experiment_id, old, "old_0", _config(LOW, True), 0.01)
    latest = _search(client, experiment_id, ["loss.lmbda", "loss.distortion"])
    runs = {
        "on_low": _trial(client, experiment_id, latest, "on_low", _config(LOW, True), 0.20, 0.30, 29.0),
        "off_low": _trial(client, experiment_id, latest, "off_low", _config(LOW, False), 0.25, 0.35, 28.5),
        "on_high": _trial(client, experiment_id, latest, "on_high", _config(HIGH, True), 2.10, 1.10, 36.0),
        "off_high": _trial(client, experiment_id, latest, "off_high", _config(HIGH, False), 2.00, 1.00, 36.2),
        "broken": _trial(client, experiment_id, latest, "broken", _config(HIGH, False, lr=5e-3), None),
    }
    return {"uri": uri, "client": client, "old": old, "latest": latest, "runs": runs, "folder": folder}


def _best(store, capsys, *args: str) -> tuple[list[dict], str]:
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--json", *args]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_json_ranks_within_each_rate_point_with_typed_params(store, capsys):
    rows, said = _best(store, capsys)
    assert f"parent run {store['latest']}" in said and "1 earlier search of this name" in said
    assert [(r["trial_id"], r["rank"]) for r in rows] == [
        ("on_low", 1), ("off_low", 2), ("off_high", 1), ("on_high", 2), ("broken", None)]
    assert rows[0]["stratum"] == {"loss.lmbda": LOW, "loss.distortion": "mse"}
    assert rows[2]["stratum"] == {"loss.lmbda": HIGH, "loss.distortion": "mse"}
    params = rows[0]["params"]
    assert params["model.N"] == 8 and params["model.auxt.enabled"] is True and params["schedule.lr"] == 1e-3
    assert params["schedule.milestones"] == [0.9] and params["model.backbone"] == "mbt2018-mean"
    assert all(r["parent_run_id"] == store["latest"] for r in rows)


def test_table_shows_the_best_of_each_rate_point(store, capsys):
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--top", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("λ=")]
    assert len(lines) == 2 and lines[0].split()[:3] == ["λ=0.0035,", "distortion=mse", "1"]
    assert "0.2 " in lines[0] and "2 " in lines[1] and "on_low" not in out  # trial ids are in the JSON only
    assert f"run {store['runs']['on_low']}" in out and f"run {store['runs']['off_high']}" in out


def test_all_and_run_id_choose_the_searches(store, capsys):
    everything, said = _best(store, capsys, "--all")
    assert "every search named 'ab' (2 parent runs)" in said
    assert {r["trial_id"] for r in everything} == {"old_0", "on_low", "off_low", "on_high", "off_high", "broken"}
    assert [r["trial_id"] for r in everything if r["rank"] == 1] == ["old_0", "off_high"]
    old, said = _best(store, capsys, "--run-id", store["old"])
    assert [(r["trial_id"], r["rank"]) for r in old] == [("old_0", 1)]
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--run-id", "nope"]) == 2
    assert "--run-id nope: not a search (parent run) of 'ab'" in capsys.readouterr().err


def test_where_filter_compares_typed_values(store, capsys):
    rows, _ = _best(store, capsys, "--where", "model.auxt.enabled=False", "--where", "loss.lmbda=0.0483")
    assert [r["trial_id"] for r in rows] == ["off_high", "broken"]


def test_mode_follows_the_metric(store, capsys):
    rows, _ = _best(store, capsys, "--metric", M.EVAL_PSNR)
    assert [r["trial_id"] for r in rows if r["rank"] == 1] == ["on_low", "off_high"]  # highest PSNR per λ
    rows, _ = _best(store, capsys, "--metric", M.EVAL_PSNR, "--mode", "min")
    assert [r["trial_id"] for r in rows if r["rank"] == 1] == ["off_low", "on_high"]


def test_export_is_a_grid_over_the_winners_of_each_rate_point(store, capsys, tmp_path):
    target = tmp_path / "best.yaml"
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--export", str(target), "--iterations", "9"]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.yaml"))
    # the winners (AuxT on at the low λ, off at the high λ) differ in two sections: one space each
    assert written == ["best-1.yaml", "best-2.yaml"]
    configs = [load_space(tmp_path / name).file.trial for name in written]
    assert [(c["loss"]["lmbda"], c["model"]["auxt"]["enabled"], c["schedule"]["iterations"]) for c in configs] == [
        (LOW, True, 9), (HIGH, False, 9)]


def test_export_of_winners_differing_only_in_lambda_is_one_grid(store, tmp_path, capsys):
    target = tmp_path / "auxt.yaml"
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--where", "model.auxt.enabled=True",
                 "--export", str(target)]) == 0
    spec = load_space(target)
    assert spec.file.trial["loss"] == {"grid": [{"lmbda": LOW}, {"lmbda": HIGH}]}
    assert spec.file.trial["model"]["auxt"]["enabled"] is True and spec.file.scheduler.type == "fifo"
    assert Path(spec.file.trial["data"]["train"]) == SAMPLES / "train"


def test_by_family_lists_families_without_bd_rate_and_exits_0(store, capsys):
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--by", "family"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["rank", "family", "AuxT"]
    rows = out[1:]
    # against the search's own baseline, its AuxT-off family: listed first, never ranked against itself
    assert len(rows) == 2 and rows[0].startswith("baseline") and "auxt=off" in rows[0] and rows[1].startswith("-")
    assert "2 rate points; BD-rate needs at least 4" in rows[1] and "BD-rate needs" not in rows[0]
    assert any("0.0035, 0.0483" in row for row in rows)
    # the readable name from the lic_search.family_name tag, not the lic_search.family hash
    assert sorted(row.split()[1:4] for row in rows) == [["auxt=haar", "·", "lr=0.001"], ["auxt=off", "·", "lr=0.001"]]
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--by", "family", "--json"]) == 0
    families = json.loads(capsys.readouterr().out)
    assert sorted(f["family_name"] for f in families) == ["auxt=haar · lr=0.001", "auxt=off · lr=0.001"]
    assert all(len(f["family"]) == 12 for f in families)  # the id stays in --json
    capsys.readouterr()
    assert main(["best", "ab", "--tracking-uri", store["uri"], "--by", "family", "--export",
                 str(store["folder"] / "fam.yaml")]) == 2
    assert "no family has a BD-rate" in capsys.readouterr().err


def test_parse_param_restores_types():
    assert [parse_param(v) for v in ("4", "True", "[0.9]", "1e-09", "None", "(1.0, 0.5)", "mse", "/data/x")] == [
        4, True, [0.9], 1e-09, None, [1.0, 0.5], "mse", "/data/x"]


# ---------------------------------------------------------------------- multi-objective: Pareto fronts
def test_pareto_fronts_sort_each_rate_point_apart_with_each_objectives_direction():
    from search.space.strata import pareto_within_strata

    rows = [{"lmbda": LOW, "rd": 0.20, "psnr": 29.0, "id": "a"}, {"lmbda": LOW, "rd": 0.30, "psnr": 30.0, "id": "b"},
            {"lmbda": LOW, "rd": 0.35, "psnr": 29.5, "id": "c"},  # worse than b on both: front 2
            {"lmbda": LOW, "rd": 0.30, "psnr": 30.0, "id": "d"},  # equal to b: beside it on the front
            {"lmbda": LOW, "rd": float("nan"), "psnr": 31.0, "id": "e"},  # cannot be compared
            {"lmbda": HIGH, "rd": 2.5, "psnr": 35.0, "id": "f"}]  # alone in its rate point: its front
    fronted = pareto_within_strata(rows, lambda r: {"loss.lmbda": r["lmbda"]}, lambda r: [r["rd"], r["psnr"]],
                                   ["min", "max"])
    assert [(r["id"], front) for r, _, front in fronted] == [
        ("a", 1), ("b", 1), ("d", 1), ("c", 2), ("e", None), ("f", 1)]


@pytest.fixture(scope="module")
def two_objectives(tmp_path_factory):
    """A search recorded with objectives eval/rd_loss (min) and eval/bpp (min), one rate point."""
    from mlflow.tracking import MlflowClient

    from search.tracking.session import search_tags

    folder = tmp_path_factory.mktemp("pareto")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("mo", artifact_location=(folder / "artifacts").as_uri())
    tags = search_tags(str(folder), ["loss.lmbda"], objectives=[(M.EVAL_RD_LOSS, "min"), (M.EVAL_BPP, "min")])
    parent = client.create_run(experiment_id, run_name="s", tags=tags).info.run_id
    points = {"fast": (0.20, 0.50, 1e-3), "small": (0.30, 0.30, 2e-3), "worse": (0.35, 0.40, 3e-3),
              "big": (0.25, 0.60, 4e-3)}
    runs = {name: _trial(client, experiment_id, parent, name, _config(LOW, True, lr=lr), rd, bpp)
            for name, (rd, bpp, lr) in points.items()}
    return {"uri": uri, "runs": runs}


def test_best_of_a_multi_objective_search_is_its_pareto_front(two_objectives, capsys):
    capsys.readouterr()
    assert main(["best", "mo", "--tracking-uri", two_objectives["uri"], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["trial_id"], r["rank"]) for r in rows] == [("fast", 1), ("small", 1), ("big", 2), ("worse", 2)]
    assert rows[0]["ranked_by"] == "pareto front: eval/rd_loss min, eval/bpp min"
    assert main(["best", "mo", "--tracking-uri", two_objectives["uri"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Pareto fronts over eval/rd_loss (min), eval/bpp (min) within each rate point")
    header = next(line for line in out.splitlines() if line.startswith("rate point"))
    assert header.split()[2:5] == ["front", M.EVAL_RD_LOSS, M.EVAL_BPP]
    runs = two_objectives["runs"]
    assert f"Pareto front per rate point: λ=0.0035: runs {runs['fast']}, {runs['small']}" in out
    # --metric ranks by that one metric instead
    assert main(["best", "mo", "--tracking-uri", two_objectives["uri"], "--json", "--metric", M.EVAL_BPP]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["trial_id"], r["rank"]) for r in rows] == [("small", 1), ("worse", 2), ("fast", 3), ("big", 4)]
