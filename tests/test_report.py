"""`lic-search report` on a small MLflow experiment shaped like a real search."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from search.analysis.curves import RDCurve, load_curve, save_curve, shipped_anchor
from search.analysis.report import ARTIFACT_PATH, DATA_FILE, REPORT_FILE
from search.cli import main
from search.tracking import names as T
from trainables import metrics as M
from trainables.config import flatten

LAMBDAS = (0.0067, 0.013, 0.025, 0.0483)
VTM_POINTS = slice(2, 6)  # four VTM points: 0.25-1.43 bpp, 31-40 dB
NO_AUXT_RATE = 1.25  # no-AuxT family: 25% more bits than the extra anchor at equal quality
AUXT_RATE = 1.10


def _config(lmbda: float, auxt: bool) -> dict:
    return {
        "model": {"backbone": "mbt2018-mean", "N": 16, "M": 16, "auxt": {"enabled": auxt, "lambda_orth": 0.1}},
        "data": {"train": "/data/train", "eval": "/data/eval", "crop_size": 64, "batch_size": 2},
        "loss": {"distortion": "mse", "lmbda": lmbda},
        "schedule": {"iterations": 400, "eval_every": 100, "lr": 1e-4, "seed": 0},
    }


def _log_trial(client, experiment_id: str, parent: str, trial_id: str, config: dict, status: str,
               metrics: dict[str, list[tuple[int, float]]]) -> str:
    from mlflow.entities import Metric, Param

    auxt = config["model"]["auxt"]["enabled"]
    run = client.create_run(experiment_id, run_name=trial_id, tags={
        T.TAG_PARENT: parent, T.TAG_ROLE: T.ROLE_TRIAL, T.TAG_TRIAL_ID: trial_id, T.TAG_STATUS: status,
        T.TAG_AUXT: "both" if auxt else "off", T.TAG_BACKBONE: "mbt2018-mean"})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     params=[Param(k, str(v)) for k, v in sorted(flatten(config).items())],
                     metrics=[Metric(name, value, now, step) for name, history in metrics.items()
                              for step, value in history])
    client.set_terminated(run.info.run_id, status="FAILED" if status == T.STATUS_ERRORED else "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A finished search: 4 λ × (AuxT, no AuxT), one early-stopped and one errored trial."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("ablation", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="ablation", tags={T.TAG_ROLE: T.ROLE_SEARCH}).info.run_id

    vtm = load_curve(shipped_anchor())
    bpp, psnr, ms_ssim = vtm.bpp[VTM_POINTS], vtm.psnr[VTM_POINTS], vtm.ms_ssim[VTM_POINTS]
    anchor = save_curve(RDCurve("four-point anchor", bpp, psnr=psnr, ms_ssim=ms_ssim), tmp_path / "anchor.json")
    steps = (100, 200, 300, 400)
    for i, lmbda in enumerate(LAMBDAS):
        scale = 1.0 + i  # R-D loss grows with λ; the shapes below fix the speed ratios
        for auxt, rate, losses in ((False, NO_AUXT_RATE, (1.0, 0.8, 0.7, 0.6)), (True, AUXT_RATE, (0.9, 0.6, 0.5, 0.45))):
            metrics = {
                M.EVAL_RD_LOSS: [(s, scale * v) for s, v in zip(steps, losses)],
                M.EVAL_BPP: [(s, bpp[i] * rate * (1 + 0.5 * (3 - k))) for k, s in enumerate(steps)],
                M.EVAL_PSNR: [(s, psnr[i] - (3 - k)) for k, s in enumerate(steps)],
                M.EVAL_MS_SSIM: [(400, ms_ssim[i])],
                M.EVAL_TOP10_ENERGY: [(s, 0.5 + 0.1 * k + (0.05 if auxt else 0.0)) for k, s in enumerate(steps)],
                M.ITERATIONS: [(s, float(s)) for s in steps],
            }
            if auxt:
                metrics[M.EVAL_AUXT_ENERGY] = [(s, 0.3 + 0.1 * k) for k, s in enumerate(steps)]
            _log_trial(client, experiment_id, parent, f"{'auxt' if auxt else 'base'}_{i}", _config(lmbda, auxt),
                       T.STATUS_COMPLETED, metrics)
    _log_trial(client, experiment_id, parent, "stopped_0", _config(0.0067, True), T.STATUS_STOPPED,
               {M.EVAL_RD_LOSS: [(100, 5.0)], M.EVAL_BPP: [(100, 3.0)], M.EVAL_PSNR: [(100, 20.0)]})
    _log_trial(client, experiment_id, parent, "errored_0", _config(0.013, False), T.STATUS_ERRORED, {})
    return {"uri": uri, "client": client, "parent": parent, "anchor": anchor, "tmp": tmp_path}


def _independent_bd_rate(anchor_bpp, anchor_quality, test_bpp, test_quality) -> float:
    """BD-rate (pchip) from the bjontegaard package itself, points sorted by quality."""
    import bjontegaard

    def by_quality(bpp, quality):
        pairs = sorted(zip(quality, bpp))
        return [b for _, b in pairs], [q for q, _ in pairs]

    rate_a, quality_a = by_quality(anchor_bpp, anchor_quality)
    rate_t, quality_t = by_quality(test_bpp, test_quality)
    return float(bjontegaard.bd_rate(rate_a, quality_a, rate_t, quality_t, "pchip",
                                     require_matching_points=False, min_overlap=0.0))


def _valid_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_report_files_tables_and_mlflow_artifacts(search, capsys):
    out = search["tmp"] / "report"
    code = main(["report", "ablation", "--tracking-uri", search["uri"], "--out", str(out),
                 "--anchor", str(search["anchor"])])
    assert code == 0, capsys.readouterr().err
    shown = capsys.readouterr()
    printed = shown.out
    # the no-AuxT family is the search's baseline (no search.baseline recorded: the one AuxT-off family): listed
    # first as F1, never ranked against itself
    assert "2 rate families (1 with a BD-rate)" in printed and "AuxT speed-up F2 vs F1: 2.00x" in printed
    # progress on stderr (not a terminal here: one line at the end): the 10 trial runs read; none on stdout
    assert re.findall(r"^report: reading runs: (\d+)/(\d+) \[", shown.err, re.M) == [("10", "10")], shown.err
    assert "reading runs" not in printed

    for name in ("rd_psnr.png", "rd_ms_ssim.png", "convergence.png", "energy.png"):
        width, height = _valid_png(out / name)
        assert width > 300 and height > 200
    markdown = (out / REPORT_FILE).read_text()
    for name in ("rd_psnr.png", "rd_ms_ssim.png", "convergence.png", "energy.png"):
        assert f"]({name})" in markdown
    assert "10 trials: 8 completed, 1 errored, 1 stopped" in markdown

    data = json.loads((out / DATA_FILE).read_text())
    families = {f["label"]: f for f in data["families"]}
    assert set(families) == {"F1", "F2"}  # the stopped and the errored trial form no family
    assert families["F2"]["auxt"] and not families["F1"]["auxt"]
    assert families["F1"]["is_baseline"] and families["F1"]["rank"] is None and families["F2"]["rank"] == 1
    assert data["baseline_family"] == "F1" and data["baseline_how"] == "the family with AuxT off"
    assert families["F2"]["lambdas"] == list(LAMBDAS) and families["F2"]["points"] == 4
    # readable names, not the family hash (no lic_search.family_name tag here: named from the params)
    assert (families["F2"]["name"], families["F1"]["name"]) == ("auxt=haar", "auxt=off")
    assert families["F2"]["key"] != "auxt=haar" and len(families["F2"]["key"]) == 12
    assert "| F2 | 1 | auxt=haar | yes | 4 |" in markdown and "| F1 | baseline | auxt=off | no | 4 |" in markdown
    assert "## Rate savings against the baseline" in markdown
    # against the search's own baseline: rates 1.10 / 1.25 of the same qualities = -12% (PSNR and MS-SSIM);
    # the baseline has no BD-rate against itself
    assert families["F2"]["bd_rate"]["F1 psnr"] == pytest.approx(-12.0, abs=1e-6)
    assert families["F2"]["bd_rate"]["F1 ms-ssim"] == pytest.approx(-12.0, abs=1e-6)
    assert "F1 psnr" not in families["F1"]["bd_rate"]
    # against the extra published anchor the curves are exact rate scalings: +10% and +25%
    assert families["F2"]["bd_rate"]["four-point anchor psnr"] == pytest.approx(10.0, abs=1e-6)
    assert families["F1"]["bd_rate"]["four-point anchor psnr"] == pytest.approx(25.0, abs=1e-6)
    # against the shipped VTM curve: recomputed here from the logged points with the bjontegaard
    # package directly (not lic-search's bd_rate), MS-SSIM converted to dB by hand
    f1_curve = load_curve(out / "curves" / "F2.json")
    four = load_curve(search["anchor"])
    f1_bpp = [b * AUXT_RATE for b in four.bpp]
    assert f1_curve.bpp == pytest.approx(f1_bpp)
    vtm = load_curve(shipped_anchor())
    expected_vtm = _independent_bd_rate(vtm.bpp, vtm.psnr, f1_bpp, four.psnr)
    assert families["F2"]["bd_rate"]["VTM psnr"] == pytest.approx(expected_vtm, abs=1e-9)
    # the BD-rate table as printed in the Markdown
    f1_row = next(line for line in markdown.splitlines() if line.startswith("| F2 |"))
    assert "| -12.00% | -12.00% |" in f1_row and "+10.00%" in f1_row and f"{expected_vtm:+.2f}%" in f1_row
    baseline_row = next(line for line in markdown.splitlines() if line.startswith("| F1 |"))
    assert "| baseline | baseline |" in baseline_row and "+25.00%" in baseline_row

    # AuxT family against its no-AuxT counterpart: rates 1.10 / 1.25 of the same qualities = -12%
    (pair,) = data["auxt_pairs"]
    assert (pair["auxt_family"], pair["no_auxt_family"]) == ("F2", "F1") and not pair["bound"]
    assert pair["bd_rate"]["psnr"] == pytest.approx((AUXT_RATE / NO_AUXT_RATE - 1) * 100, abs=1e-6)
    assert pair["bd_rate"]["ms-ssim"] == pytest.approx(-12.0, abs=1e-6) and pair["speedup"] == pytest.approx(2.0)
    pair_row = next(line for line in markdown.splitlines() if line.startswith("| F2 vs F1 | -12.00% |"))
    assert "| -12.00% | 50.0% | 2.00× |" in pair_row

    # speed: AuxT reaches the no-AuxT final loss at iteration 200 of 400 at every λ
    per_lambda = [s for s in data["speed"] if s["lmbda"] is not None]
    assert [s["lmbda"] for s in per_lambda] == list(LAMBDAS)
    for row in per_lambda:
        assert row["auxt_iterations_to_no_auxt_final"] == pytest.approx(200.0)
        assert row["fraction"] == pytest.approx(0.5) and row["no_auxt_iterations_to_auxt_final"] is None
    summary = next(s for s in data["speed"] if s["lmbda"] is None)
    assert summary["speedup"] == pytest.approx(2.0)
    speed_rows = [line for line in markdown.splitlines() if line.startswith("| F2 vs F1 | 0.0")]
    assert len(speed_rows) == 4 and all("| 200 | 400 | 50.0% | 2.00× |" in row for row in speed_rows)

    # best per rate point: AuxT wins at every λ (R-D loss 0.45·scale < 0.6·scale); the stopped trial (5.0 at
    # λ=0.0067) is compared but loses; the errored one has no loss and is not counted
    best = data["best_per_rate_point"]
    assert [(b["stratum"]["loss.lmbda"], b["trial_id"], b["of"]) for b in best] == [
        (0.0067, "auxt_0", 3), (0.013, "auxt_1", 2), (0.025, "auxt_2", 2), (0.0483, "auxt_3", 2)]
    assert [b["value"] for b in best] == pytest.approx([0.45 * (1 + i) for i in range(4)])
    assert "## Best trial per rate point" in markdown and "| λ=0.0483, distortion=mse | F2 | auxt_3 | yes |" in markdown
    assert "best at λ=0.013, distortion=mse: F2 (trial auxt_1, eval/rd_loss" in printed

    trials = {t["trial_id"]: t for t in data["trials"]}
    assert trials["stopped_0"]["family"] is None and trials["stopped_0"]["iterations"] == 100
    assert trials["auxt_3"]["final"][M.EVAL_PSNR] == pytest.approx(load_curve(search["anchor"]).psnr[3])

    # the same files are attached to the parent run
    listed = {a.path for a in search["client"].list_artifacts(search["parent"], ARTIFACT_PATH)}
    assert {f"{ARTIFACT_PATH}/{n}" for n in (REPORT_FILE, DATA_FILE, "rd_psnr.png", "convergence.png",
                                             "energy.png", "curves")} <= listed
    downloaded = Path(search["client"].download_artifacts(search["parent"], f"{ARTIFACT_PATH}/{REPORT_FILE}",
                                                          str(search["tmp"] / "download")))
    assert downloaded.read_text() == markdown


def test_include_stopped_adds_the_stopped_trial_to_its_family(search):
    from search.analysis.report import build_report, load_search

    record = load_search("ablation", search["uri"])
    assert record.parent_run_id == search["parent"] and len(record.trials) == 10
    report = build_report(record, search["tmp"] / "with-stopped", include_stopped=True)
    auxt_family = next(f for f in report.data["families"] if f["auxt"])
    assert "stopped_0" in auxt_family["trials"] and auxt_family["points"] == 5
    assert report.attached_to is None


def test_rank_experiment_families_for_best_by_family(search):
    from search.analysis.report import rank_experiment_families

    rows = rank_experiment_families("ablation", search["uri"], anchor_file=search["anchor"])
    assert [(r["rank"], r["auxt"]) for r in rows] == [(1, True), (2, False)]
    assert [r["bd_rate"] for r in rows] == pytest.approx([10.0, 25.0], abs=1e-6)
    assert rows[0]["points"] == 4 and rows[0]["lambdas"] == list(LAMBDAS) and rows[0]["reference"] == "four-point anchor"
    assert [r["family_name"] for r in rows] == ["auxt=haar", "auxt=off"]
    assert all(len(r["family"]) == 12 and r["family"] != r["family_name"] for r in rows)  # the id stays


def test_unknown_experiment_is_an_error(search, capsys):
    assert main(["report", "nope", "--tracking-uri", search["uri"], "--out", str(search["tmp"] / "x")]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
