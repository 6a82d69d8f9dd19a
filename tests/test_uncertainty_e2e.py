"""A real tiny ablation (the smoke components preset: 4 labelled variants, Ray, MLflow, CPU) answers with its
uncertainty end to end: every evaluation's per-image results in MLflow, and the best trial of the rate point
with its lead over each runner-up (interval, ties) in the end-of-search summary, `status`, the parent run,
`best` and `report`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from search.cli import main
from search.space import load_space
from search.tracking import names as T
from search.tracking.client import client_for
from search.tracking.queries import per_image_table, select_search, trial_runs
from tests.conftest import REPO
from trainables import metrics as M

pytestmark = pytest.mark.slow

PRESET = REPO / "spaces" / "smoke" / "ablation_components.yaml"
INTERVAL = r"[+-]\d+\.\d % \[[+-]\d+\.\d, [+-]\d+\.\d\]"
METHOD = "95% percentile intervals, paired bootstrap over images (and seeds where a variant has several), " \
         "1000 resamples, seed 20261207"


def test_a_tiny_ablation_prints_its_intervals_end_to_end(tmp_path: Path, ray_cluster, capsys):
    from search.monitor.ending import print_ending
    from search.tuning.tuner import run_search

    spec = load_space(PRESET)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_search(PRESET, tmp_path / "results", tracking_uri=uri)
    assert not any(r.error for r in outcome.results)
    runs = trial_runs(spec.name, uri)
    client = client_for(uri)
    for run in runs:  # every evaluation's per-image results, on the run
        listed = sorted(a.path for a in client.list_artifacts(run.info.run_id, M.PER_IMAGE_FOLDER))
        assert listed == [M.per_image_artifact(12), M.per_image_artifact(24)]
        table = per_image_table(client, run.info.run_id)
        assert len(table.names) == 2
        assert sum(table.columns["rd_loss"]) / 2 == pytest.approx(run.data.metrics[M.EVAL_RD_LOSS], rel=1e-6)

    capsys.readouterr()
    print_ending(outcome.results, outcome.folder)
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("best at λ=0.0483")]
    labels = "|".join(re.escape(label) for label in spec.variants.labels())
    assert re.search(rf" — (?:{labels}) · λ=0.0483 \(trial \w+\); (?:tied with|leads) (?:{labels}) · λ=0.0483 "
                     rf"\(trial \w+\)(?: by|:) {INTERVAL}", line), line
    assert f"(runner-up differences in % of the best's eval/rd_loss, paired over the eval images; {METHOD})" in out

    parent = select_search(spec.name, uri).parent_run_id  # the parent run: table, metrics, tag
    table = Path(client.download_artifacts(parent, T.ARTIFACT_BEST_TABLE, str(tmp_path))).read_text()
    assert "runner-up [95 %]" in table and "tied with" in table and METHOD in table
    metrics = client.get_run(parent).data.metrics
    key = "best/λ_0.0483 distortion_mse"
    assert metrics[f"{key}/runner_up_gap_pct_lower"] <= metrics[f"{key}/runner_up_gap_pct"] \
        <= metrics[f"{key}/runner_up_gap_pct_upper"]
    assert f"{key}/tied" in metrics

    assert main(["status", str(outcome.folder), "--json"]) == 0
    (best,) = json.loads(capsys.readouterr().out)["best"]
    assert {"estimate", "lower", "upper", "relative", "tied", "name"} <= set(best["runner_up"])
    assert main(["status", str(outcome.folder)]) == 0
    assert re.search(rf"best at λ=0.0483.*(?:tied with|leads) .*{INTERVAL}", capsys.readouterr().out)

    assert main(["best", spec.name, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "vs best [95 %]" in out and len(re.findall(INTERVAL, out)) == 3  # each runner-up's difference

    assert main(["report", spec.name, "--tracking-uri", uri, "--out", str(tmp_path / "report"), "--no-attach"]) == 0
    out = capsys.readouterr().out
    assert f"intervals: {METHOD}" in out
    assert re.search(rf"best at λ=0.0483, distortion=mse: (?:{labels}) \(trial \w+, eval/rd_loss [\d.]+, of 4\); "
                     rf"(?:tied with|leads) (?:{labels}) \(trial \w+\)(?: by|:) {INTERVAL}", out), out
