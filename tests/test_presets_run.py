"""Representative scaled-down presets run end to end (Ray local cluster, MLflow, CPU).

Chosen to cover the kinds of experiment the presets reproduce: an AuxT ablation grid
(wavelet bases, Figure 8b), the backbones × AuxT table (Table 1, two CompressAI backbones),
a rate family with the MS-SSIM objective, the lr / patch-size schedules (each trial's MLflow
lr and crop-size history checked against its schedule), the llic-style kernel ablation and
the two-objective (R-D loss, decode steps) NSGA-II search over msp-style profiles.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from search.space import load_space
from search.tracking import names as T
from search.tracking.queries import trial_runs
from tests.conftest import REPO
from trainables import metrics as M

pytestmark = pytest.mark.slow

SMOKE = REPO / "spaces" / "smoke"


@pytest.mark.parametrize("preset, varied", [
    ("ablation_wavelets.yaml", "model.auxt.wavelet"),
    ("backbones_conv.yaml", "model.backbone"),
    ("rate_ms_ssim.yaml", "loss.lmbda"),
    ("schedules.yaml", "schedule.decay"),
    ("ablation_llic.yaml", "model.llic.kernel"),
    ("msp_profiles.yaml", "model.msp.steps"),
])
def test_smoke_preset_runs_every_trial(preset: str, varied: str, tmp_path: Path, ray_cluster, capsys):
    from search.tuning.tuner import run_search

    spec = load_space(SMOKE / preset)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_search(SMOKE / preset, tmp_path / "results", tracking_uri=uri)
    results = outcome.results
    assert len(results) == spec.trial_count() and not any(r.error for r in results)
    runs = trial_runs(spec.name, uri)
    assert len(runs) == spec.trial_count()
    assert all(r.data.tags[T.TAG_STATUS] == "completed" for r in runs)
    assert all(math.isfinite(r.data.metrics[M.EVAL_RD_LOSS]) for r in runs)
    assert len({r.data.params.get(varied) for r in runs}) >= 2  # the preset's knob really varied
    if preset == "ablation_wavelets.yaml":  # labelled variants name the runs, tag them, and the baseline is recorded
        from search.tracking.queries import select_search

        assert sorted(r.data.tags[T.TAG_VARIANT] for r in runs) == sorted(spec.variants.labels())
        assert all(r.info.run_name.startswith(r.data.tags[T.TAG_VARIANT] + " · λ=") for r in runs)
        assert all(r.data.tags[T.TAG_FAMILY_NAME] == r.data.tags[T.TAG_VARIANT] for r in runs)
        selection = select_search(spec.name, uri)
        assert selection.baseline == "baseline" and list(selection.variants) == spec.variants.labels()
        from search.monitor.ending import print_ending  # the end-of-search summary names the winners so too

        capsys.readouterr()
        print_ending(results, outcome.folder)
        best = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best at ")]
        assert best and all(any(f" — {label} · λ=" in line for label in spec.variants.labels()) for line in best)
    if preset == "rate_ms_ssim.yaml":
        assert all(r.data.params["loss.distortion"] == "ms-ssim" for r in runs)
        assert all(0 < r.data.metrics[M.EVAL_MS_SSIM] <= 1 for r in runs)
    if preset == "schedules.yaml":  # each trial's train/lr (and train/crop_size) history has its shape
        from tests.test_schedules import check_schedule_histories

        assert check_schedule_histories(runs, uri) == {"step", "cosine", "plateau"}
    if preset == "msp_profiles.yaml":  # the second objective: each profile's decoding steps, whatever the image
        assert all(r.data.metrics[M.EVAL_DECODE_STEPS] == int(r.data.params["model.msp.steps"]) for r in runs)
        check_pareto_answer(spec, results, outcome.folder, runs, uri, capsys)


def check_pareto_answer(spec, results, folder, runs, uri, capsys) -> None:
    """A two-objective search answers with its Pareto front, at its end and in ``best``: exactly the trials
    no other trial beats on both eval/rd_loss and eval/decode_steps."""
    import json

    from search.cli import main
    from search.monitor.ending import print_ending

    points = {r.info.run_id: (r.data.metrics[M.EVAL_RD_LOSS], r.data.metrics[M.EVAL_DECODE_STEPS]) for r in runs}
    front = {run for run, (a, b) in points.items()
             if not any(x <= a and y <= b and (x, y) != (a, b) for x, y in points.values())}
    capsys.readouterr()
    print_ending(results, folder)
    out = capsys.readouterr().out
    assert "Pareto front per rate point (eval/rd_loss min, eval/decode_steps min):" in out
    assert f"front at λ=0.0483, distortion=mse: {len(front)} trial" in out
    members = [line for line in out.splitlines() if line.startswith("  eval/rd_loss ")]
    assert len(members) == len(front) and all(" · msp.steps=" in line for line in members)
    from search.tracking.client import client_for
    from search.tracking.queries import select_search

    parent = select_search(spec.name, uri).parent_run_id  # the parent run's summary table leads with the fronts
    table = Path(client_for(uri).download_artifacts(parent, T.ARTIFACT_BEST_TABLE, str(folder))).read_text()
    assert table.startswith("Pareto front per rate point over eval/rd_loss min, eval/decode_steps min within ")
    assert table.count("\n| λ=0.0483, distortion=mse |") == len(front) + 1  # the front, then the best by rd_loss
    assert main(["best", spec.name, "--tracking-uri", uri, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in rows if r["rank"] == 1} == front
    assert all(r["ranked_by"] == "pareto front: eval/rd_loss min, eval/decode_steps min" for r in rows)
    assert main(["status", str(folder), "--json"]) == 0  # status shows the same front
    status = json.loads(capsys.readouterr().out)
    by_trial = {r.data.tags[T.TAG_TRIAL_ID]: r.info.run_id for r in runs}
    (shown,) = status["pareto_fronts"]
    assert {by_trial[t["trial_id"]] for t in shown["trials"]} == front
