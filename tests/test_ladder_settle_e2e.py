"""Issue 34 end to end on the real stack: a ladder search whose fine-tune ends by the settle rule (its run
says why), and a deliberately short, gentle fine-tune whose bunched family `report` and `best --by family`
warn about."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from search.tracking import names as T
from search.tracking.client import client_for
from tests.test_faults_and_clusters import LIC_SEARCH, kill_orphaned_ray, ray_daemons, trial_runs
from tests.test_ladder_space import ladder_space
from trainables import metrics as M

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: int = 600) -> str:
    done = subprocess.run(LIC_SEARCH + list(args), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_settled_fine_tune_records_why_and_its_bunched_family_is_warned_about(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483},
                                   # short and gentle on purpose: the rate cannot move 27x in λ at lr 1e-5
                                   "fine_tune": {"schedule.iterations": 60, "schedule.lr": 1e-5},
                                   "settle": {"tolerance": 50, "evaluations": 2}},
                        name="settle", scheduler={"type": "fifo"}, resources={"cpus_per_trial": 1, "max_failures": 0})
    space = yaml.safe_load(path.read_text())
    space["trial"]["loss"]["lmbda"] = {"grid": [0.0018, 0.0483]}
    space["trial"]["schedule"]["lr"] = 1e-3  # one family
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    daemons = ray_daemons()
    try:
        out = _cli("run", str(path), "--storage-path", str(tmp_path / "results"), "--tracking-uri", uri, timeout=900)
    finally:
        kill_orphaned_ray(daemons)
    runs = {r.data.tags[T.TAG_LADDER]: r for r in trial_runs(uri, "settle")}
    fine, start_point = runs[T.LADDER_FINE_TUNE], runs[T.LADDER_START]
    fine_id = fine.data.tags[T.TAG_TRIAL_ID]
    # Two evaluations (iterations 10 and 20) within 50% of each other: settled long before the cap of 60.
    why = "settled at iteration 20: eval/bpp and eval/rd_loss changed less than 50% over the last 2 evaluations"
    assert f"ladder: fine-tune {fine_id} {why}" in out
    assert fine.data.tags[T.TAG_STATUS_DETAIL] == f"{why} (cap 60)"
    assert fine.data.tags[T.TAG_STATUS] == T.STATUS_COMPLETED and fine.data.metrics[M.ITERATIONS] == 20
    assert start_point.data.tags[T.TAG_STATUS_DETAIL] == "completed 40 iterations"  # the start point is not settled
    fine_bpp, start_bpp = fine.data.metrics[M.EVAL_BPP], start_point.data.metrics[M.EVAL_BPP]
    assert max(fine_bpp, start_bpp) / min(fine_bpp, start_bpp) < (0.0483 / 0.0018) ** 0.4  # bunched indeed

    report = _cli("report", "settle", "--tracking-uri", uri, "--out", str(tmp_path / "report"), "--no-attach")
    warning = (f"ladder family F1 is bunched: its rates span "
               f"{max(fine_bpp, start_bpp) / min(fine_bpp, start_bpp):.2f}× over a 26.8× λ range (start point λ 0.0483 "
               f"at {start_bpp:.3f} bpp, fine-tuned λ 0.0018 at {fine_bpp:.3f} bpp)")
    assert f"warning: {warning}" in report
    assert f"**Warning:** {warning}" in (tmp_path / "report" / "report.md").read_text()
    families = json.loads((tmp_path / "report" / "report.json").read_text())["families"]
    assert [f["bunched"].startswith(warning) for f in families] == [True]
    best = _cli("best", "settle", "--tracking-uri", uri, "--by", "family")
    assert "warning: ladder family " in best and "is bunched: its rates span" in best

    client = client_for(uri)
    steps = [m.step for m in client.get_metric_history(fine.info.run_id, M.EVAL_BPP)]
    assert steps == [10, 20]  # it ended at the evaluation that settled it

    # The phase folder keeps why it settled, so `status` (and the live view) call it completed, as MLflow does,
    # not "stopped" as a trial a scheduler ended before its budget.
    experiment = tmp_path / "results" / "settle"
    assert json.loads((experiment / "fine_tune" / "settled.json").read_text()) == {fine_id: why}
    status = json.loads(_cli("status", str(experiment), "--json"))
    states = {t["trial_id"]: t["state"] for t in status["trials"]}
    assert states[fine_id] == "completed" and set(states.values()) == {"completed"}, states
