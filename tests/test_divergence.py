"""Diverged trials are terminal: errored once with their reason, never retried, never resumed.

Resume is exact, so a trial whose loss went non-finite would diverge again at the same
iteration on every retry; crashes (a killed process) are still retried (see
``test_faults_and_clusters.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from search.tracking import names as T
from tests.conftest import SAMPLES
from tests.test_schedulers import CONTINUE, STOP, asha, feed, make_trial
from trainables import metrics as M
from trainables.errors import TrainingDivergedError
from trainables.training.trainable import diverged_result


def test_diverged_result_carries_the_reason_and_nan_scores():
    result = diverged_result(TrainingDivergedError("non-finite loss at iteration 7: train/rd_loss=inf"), 9)
    assert result[M.DIVERGED] == 1 and result[M.ITERATIONS] == 9
    assert result[M.DIVERGED_REASON] == "TrainingDivergedError: non-finite loss at iteration 7: train/rd_loss=inf"
    for name in (M.EVAL_RD_LOSS, M.EVAL_PSNR, M.EVAL_BPP, M.TRAIN_LOSS):  # any metric a search may rank by
        assert math.isnan(result[name])


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_at_an_asha_rung_stops_the_trial(score):
    scheduler = asha()
    good, bad = make_trial("good"), make_trial("bad")
    assert feed(scheduler, good, {1: 1.0, 2: 0.9}) == [CONTINUE, CONTINUE]
    # At iteration 1 (a rung) a finite loss would continue; a non-finite one stops at once.
    assert feed(scheduler, bad, {1: score}) == [STOP]
    assert feed(scheduler, make_trial("later"), {1: 0.95}) == [CONTINUE]  # the NaN did not enter the rung


def _results_of(experiment: Path) -> dict[float, list[dict]]:
    """Every result each trial reported (Ray's result.json), by λ: one line per report."""
    by_lambda = {}
    for file in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        config = json.loads((file.parent / "params.json").read_text())
        by_lambda[config["loss"]["lmbda"]] = lines
    return by_lambda


@pytest.mark.slow
def test_diverged_trial_errors_once_and_resume_does_not_run_it_again(tmp_path: Path, ray_cluster, capsys):
    from search.tracking.queries import trial_runs
    from search.tuning.tuner import resume_search, run_search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = {
        "name": "nan",
        "trial": {
            "model": {"backbone": "mbt2018-mean", "N": 8, "M": 8, "auxt": {"enabled": True}},
            "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64,
                     "batch_size": 2, "num_workers": 0, "max_eval_images": 1},
            # λ = 1e38: λ·255²·MSE overflows float32, so the loss is inf at iteration 1.
            "loss": {"lmbda": {"grid": [0.013, 1e38]}},
            "schedule": {"iterations": 4, "eval_every": 2, "lr": 1e-3, "seed": 0},
        },
        "search": {"max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        # Retries allowed: a crash would get two more tries; a divergence must get none.
        "resources": {"cpus_per_trial": 1, "max_failures": 2},
    }
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(space))
    outcome = run_search(path, tmp_path / "results", tracking_uri=uri)
    results, location = outcome.results, outcome.folder

    assert len(results) == 2 and not any(r.error for r in results)  # nothing for Ray to retry
    by_lambda = {r.config["loss"]["lmbda"]: r for r in results}
    diverged = by_lambda[1e38].metrics
    assert diverged[M.DIVERGED] == 1 and "non-finite loss at iteration 1" in diverged[M.DIVERGED_REASON]
    assert math.isnan(diverged[M.EVAL_RD_LOSS])
    assert M.DIVERGED not in by_lambda[0.013].metrics

    experiment = Path(location)
    reports = _results_of(experiment)
    assert [r[M.ITERATIONS] for r in reports[0.013]] == [2, 4]
    assert len(reports[1e38]) == 1 and reports[1e38][0][M.DIVERGED] == 1  # one start, one report: no retry
    assert not list(experiment.glob("*/error.txt"))
    from search.monitor.ending import print_ending  # the closing line counts it as the progress view does

    capsys.readouterr()
    print_ending(results, location)
    assert "\n2 trials (1 errored, 1 of them diverged). Experiment folder: " in capsys.readouterr().out

    def check_mlflow():
        runs = {r.data.params["loss.lmbda"]: r for r in trial_runs("nan", uri)}
        assert len(runs) == 2
        assert runs["1e+38"].data.tags[T.TAG_STATUS] == T.STATUS_ERRORED
        assert "TrainingDivergedError: non-finite loss at iteration 1" in runs["1e+38"].data.tags[T.TAG_STATUS_DETAIL]
        assert runs["1e+38"].info.status == "FAILED"
        assert M.EVAL_RD_LOSS not in runs["1e+38"].data.metrics  # NaN scores are not logged as measurements
        assert runs["0.013"].data.tags[T.TAG_STATUS] == T.STATUS_COMPLETED

    check_mlflow()
    outcome = resume_search(location)
    assert outcome.results is None  # every trial had ended: resume trains nothing (no Ray started)
    assert len(_results_of(experiment)[1e38]) == 1  # resume did not start the diverged trial
    check_mlflow()
