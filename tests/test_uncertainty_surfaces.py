"""Intervals where people read them: `report`, `best --by family`, `best`, on an MLflow search with known truth.

A labelled ablation recorded as lic-search records one: three variants (the baseline "baseline", "full WLS"
saving 10 % rate at equal quality, "no WLS" identical to the baseline) at four λ, each trial's last evaluation
with its per-image table (artifact per_image/step_N.json) on 12 images of different difficulty."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from search.cli import main
from search.tracking import names as T
from trainables import metrics as M
from trainables.config import flatten

LAMBDAS = (0.0035, 0.0067, 0.013, 0.025)
IMAGES = 12
VARIANTS = {"baseline": (False, None, 1.0), "full WLS": (True, 0.1, 0.90), "no WLS": (True, 0.01, 1.0)}


def _config(lmbda: float, auxt: bool, lambda_orth) -> dict:
    auxt_config = {"enabled": auxt} | ({"lambda_orth": lambda_orth} if auxt else {})
    return {"model": {"backbone": "mbt2018-mean", "N": 16, "M": 16, "auxt": auxt_config},
            "data": {"train": "/data/train", "eval": "/data/eval", "crop_size": 64, "batch_size": 2},
            "loss": {"distortion": "mse", "lmbda": lmbda},
            "schedule": {"iterations": 400, "eval_every": 400, "lr": 1e-4, "seed": 0}}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("ablation")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("fig8", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="fig8", tags={
        T.TAG_ROLE: T.ROLE_SEARCH, T.TAG_BASELINE: "baseline", T.TAG_VARIANTS: json.dumps(list(VARIANTS))}).info.run_id
    rng = np.random.default_rng(0)
    rate_effect, quality_effect = np.exp(rng.normal(0, 0.3, IMAGES)), rng.normal(0, 1.5, IMAGES)
    now = int(time.time() * 1000)
    for label, (auxt, lambda_orth, factor) in VARIANTS.items():
        for j, lmbda in enumerate(LAMBDAS):
            table = M.PerImage()
            for i in range(IMAGES):
                bpp = 0.15 * 2**j * rate_effect[i] * factor * np.exp(rng.normal(0, 0.02))
                psnr = 28 + 2.2 * j + quality_effect[i] + rng.normal(0, 0.05)
                mse = 10 ** (-psnr / 10)
                table.add(f"kodim{i + 1:02d}.png", bpp=bpp, psnr=psnr, mse=mse, rd_loss=lmbda * 255**2 * mse + bpp)
            means = {c: float(np.mean(table.columns[c])) for c in ("bpp", "psnr", "mse", "rd_loss")}
            config = _config(lmbda, auxt, lambda_orth)
            trial_id = f"{label.replace(' ', '_')}_{j}"
            run_id = client.create_run(experiment_id, run_name=trial_id, tags={
                T.TAG_PARENT: parent, T.TAG_ROLE: T.ROLE_TRIAL, T.TAG_TRIAL_ID: trial_id,
                T.TAG_STATUS: T.STATUS_COMPLETED, T.TAG_VARIANT: label}).info.run_id
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(flatten(config).items())],
                             metrics=[Metric(M.EVAL_BPP, means["bpp"], now, 400),
                                      Metric(M.EVAL_PSNR, means["psnr"], now, 400),
                                      Metric(M.EVAL_MSE, means["mse"], now, 400),
                                      Metric(M.EVAL_RD_LOSS, means["rd_loss"], now, 400),
                                      Metric(M.ITERATIONS, 400, now, 400)])
            client.log_text(run_id, table.to_json(), M.per_image_artifact(400))
            client.set_terminated(run_id, status="FINISHED")
    return {"uri": uri, "tmp": tmp_path}


INTERVAL = r"[+-]\d+\.\d %? ?\[[+-]\d+\.\d, [+-]\d+\.\d\]"


def test_report_prints_each_rate_saving_with_its_interval_and_the_resolution(ablation, capsys):
    out_dir = ablation["tmp"] / "report"
    assert main(["report", "fig8", "--tracking-uri", ablation["uri"], "--out", str(out_dir), "--no-attach"]) == 0
    out = capsys.readouterr().out
    assert "intervals: 95% percentile intervals, paired bootstrap over images" in out
    assert "1000 resamples, seed 20261207" in out
    full = re.search(rf"  full WLS: ({INTERVAL}) \(group (\w+), 1 seed\(s\)\)", out)
    assert full, out
    estimate, lower, upper = map(float, re.findall(r"[+-]\d+\.\d", full.group(1)))
    assert upper < 0 and lower < estimate < upper and abs(estimate + 10) < 2  # the set 10 % saving, resolved
    no_wls = re.search(rf"  no WLS: ({INTERVAL}) \(group (\w+), 1 seed\(s\), tied with baseline\)", out)
    assert no_wls, out
    assert no_wls.group(2) != full.group(2)  # told apart from full WLS, in the baseline's group
    assert re.search(r"  baseline: the baseline \(group " + no_wls.group(2), out)
    assert re.search(r"with 12 images and 1 seed per variant, differences under \d\.\d % BD-rate are not resolved", out)
    # best per rate point names the variant label and the trial; full WLS leads clearly at every λ
    leads = re.findall(r"best at λ=[\d.]+, distortion=mse: full WLS \(trial full_WLS_\d, eval/rd_loss [\d.]+, "
                       r"of 3\); leads (?:no WLS|baseline) \(trial \w+\) by \+\d+\.\d % \[", out)
    assert len(leads) == 4 and "tied with" not in out.split("rate saving")[0].split("intervals:")[1]

    data = json.loads((out_dir / "report.json").read_text())
    rows = {f["label"]: f for f in data["families"]}
    assert rows["full WLS"]["interval"]["upper"] < 0 and rows["full WLS"]["tied_with"] == []
    assert rows["no WLS"]["tied_with"] == ["baseline"] and rows["no WLS"]["interval"]["lower"] < 0
    pairs = {(d["a"], d["b"]): d for d in data["intervals"]["differences"]}  # between any two variants
    between = pairs.get(("full WLS", "no WLS")) or pairs[("no WLS", "full WLS")]
    assert not between["tied"] and abs(abs(between["estimate"]) - 9.9) < 2
    assert data["bootstrap"] == {"method": "paired bootstrap over images (and seeds), percentile",
                                 "resamples": 1000, "seed": 20261207, "level": 0.95}
    markdown = (out_dir / "report.md").read_text()
    assert "rate saving vs baseline [95 % interval]" in markdown and "are not resolved" in markdown
    assert "![Rate savings with intervals](rate_savings.png)" in markdown
    assert (out_dir / "rate_savings.png").read_bytes()[:4] == b"\x89PNG"
    # reproducible: the same search, the same intervals
    assert main(["report", "fig8", "--tracking-uri", ablation["uri"], "--out", str(out_dir / "again"),
                 "--no-attach"]) == 0
    again = json.loads((out_dir / "again" / "report.json").read_text())
    assert again["intervals"]["variants"] == data["intervals"]["variants"]


def test_best_by_family_has_an_interval_column_and_ties(ablation, capsys):
    assert main(["best", "fig8", "--tracking-uri", ablation["uri"], "--by", "family"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "rate saving [95 %]" in header and "tied with" in header and "group" in header
    full = next(line for line in out.splitlines() if line.startswith("1 ") and "full WLS" in line)
    assert re.search(r"-\d+\.\d % \[-\d+\.\d, -\d+\.\d\]", full)
    no_wls = next(line for line in out.splitlines() if "no WLS" in line and not line.startswith("rate"))
    assert "baseline" in no_wls.split("%]")[-1]  # its tied-with column names the baseline by its label
    assert "differences under" in out and "not told apart" in out
    assert main(["best", "fig8", "--tracking-uri", ablation["uri"], "--by", "family", "--json"]) == 0
    rows = {row["label"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"estimate", "lower", "upper"} == set(rows["full WLS"]["interval"])
    assert rows["full WLS"]["interval"]["lower"] <= rows["full WLS"]["interval"]["upper"] < 0
    assert rows["no WLS"]["tied_with"] == ["baseline"] and rows["baseline"]["is_baseline"]


def test_best_marks_the_runner_ups_difference_and_tied_leaders(ablation, capsys):
    assert main(["best", "fig8", "--tracking-uri", ablation["uri"], "--metric", M.EVAL_BPP]) == 0
    out = capsys.readouterr().out
    assert "vs best [95 %]" in out and "paired over the eval images" in out
    # by bpp alone, baseline and no WLS are indistinguishable: whichever is second at a λ is tied with ... no:
    # full WLS leads every λ by ~10 %, so it is "best" and never tied
    leaders = [line for line in out.splitlines() if re.search(r"\s1\s+[\d.]+", line)]
    assert len(leaders) == 4 and all("best" in line and "tied" not in line for line in leaders)
    thirds = [line for line in out.splitlines() if re.search(r"\s3\s+[\d.]+", line)]
    assert all(re.search(r"\+\d+\.\d % \[\+\d+\.\d, \+\d+\.\d\]", line) for line in thirds)
    assert main(["best", "fig8", "--tracking-uri", ablation["uri"], "--metric", M.EVAL_BPP, "--json",
                 "--where", "model.auxt.enabled=False", "--where", "loss.lmbda=0.0035"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["tied_with"] == [] and rows[0]["intervals"]["resamples"] == 1000


def test_best_says_a_tie_when_the_leader_cannot_be_told_from_the_runner_up(ablation, capsys):
    # baseline and no WLS only: identical recipes up to noise, so at some λ the leader is tied
    assert main(["best", "fig8", "--tracking-uri", ablation["uri"], "--where", "loss.lmbda=0.0067",
                 "--where", "model.auxt.lambda_orth=0.01", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["rank"] for row in rows] == [1]
    assert main(["best", "fig8", "--tracking-uri", ablation["uri"], "--metric", M.EVAL_PSNR]) == 0
    out = capsys.readouterr().out
    # same quality at every λ for all three variants (only the rate differs): every leader is tied
    assert out.count("best, tied") == 4
    assert re.search(r"best per rate point: λ=[\d.]+, distortion=mse: (?:baseline|no WLS|full WLS) run \w+ "
                     r"\(tied with (?:baseline|no WLS|full WLS) run", out)
