"""A ladder search from the CLI on the real stack: the fine-tuned rate point starts from its start
point's weights, its run says so, and a driver SIGKILLed in the fine-tune phase resumes without re-running the start point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from search.tracking import names as T
from search.tracking.client import client_for
from tests.test_faults_and_clusters import (LIC_SEARCH, kill_orphaned_ray, kill_session, newest_checkpoint,
                                            ray_daemons, result_iterations, start, trial_runs, wait_for)
from tests.test_ladder_space import ladder_space
from trainables import metrics as M

pytestmark = pytest.mark.slow


def _scratch_first_eval(config: dict) -> float:
    """The first evaluation of the same rate point trained from scratch (same seed, data, schedule)."""
    from trainables.config import TrialConfig
    from trainables.training.engine import Trainer

    config = json.loads(json.dumps(config))
    config["model"].pop("init_from")
    return next(Trainer(TrialConfig.model_validate(config)).train())[M.EVAL_RD_LOSS]


def test_ladder_fine_tunes_from_the_start_and_resumes_after_sigkill(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483},
                                    "fine_tune": {"schedule.iterations": 50, "schedule.lr": 1e-3}},
                         name="ladder2", resources={"cpus_per_trial": 1, "max_failures": 0})
    text = space.read_text().replace("- 0.0067\n      - 0.013\n      - 0.025\n", "- 0.013\n")  # 2 rate points
    text = text.replace("grid:\n      - 0.001\n      - 0.003", "0.003")  # one family
    space.write_text(text.replace("type: asha", "type: fifo"))
    results = tmp_path / "results"
    experiment = results / "ladder2"
    daemons = ray_daemons()
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri],
                   tmp_path / "driver.log")

    def fine_tuning():
        runs = [r for r in trial_runs(uri, "ladder2") if r.data.tags.get(T.TAG_LADDER) == T.LADDER_FINE_TUNE]
        return runs and runs[0].data.metrics.get(M.ITERATIONS, 0) >= 20

    try:
        try:
            wait_for(fine_tuning, 420, "the fine-tuned trial half-way", interval=0.2)
        except BaseException:
            kill_session(driver)
            raise
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        (start_id,) = result_iterations(experiment)
        start_checkpoint = newest_checkpoint(experiment, start_id)
        resumed = subprocess.run(LIC_SEARCH + ["resume", str(experiment)], capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_orphaned_ray(daemons)
    assert "ladder: 1 of 1 rate families fine-tune 1 trials" in resumed.stdout
    # The start point never trained again: one trial in the start phase, its checkpoints as before.
    assert list(result_iterations(experiment)) == [start_id]
    assert newest_checkpoint(experiment, start_id) == start_checkpoint
    (fine_id, iterations), = result_iterations(experiment / "fine_tune").items()
    assert iterations[-1] == 50 and iterations == sorted(iterations) and iterations[0] == 10
    assert len(iterations) - len(set(iterations)) <= 1  # continued from its checkpoint, not from zero

    runs = {r.data.tags[T.TAG_TRIAL_ID]: r for r in trial_runs(uri, "ladder2")}
    assert set(runs) == {start_id, fine_id}
    start_point, fine = runs[start_id], runs[fine_id]
    origin = json.loads(fine.data.tags[T.TAG_INIT_FROM])
    assert origin["start_trial"] == start_id and origin["start_run"] == start_point.info.run_id
    assert f"{start_id}" in origin["checkpoint"] and Path(origin["checkpoint"]).is_dir()
    assert json.loads(start_point.data.tags[T.TAG_LADDER_CHILDREN]) == [fine_id]
    assert start_point.data.tags[T.TAG_LADDER] == T.LADDER_START
    assert fine.data.tags[T.TAG_FAMILY] == start_point.data.tags[T.TAG_FAMILY]
    assert fine.data.params["model.init_from"] == origin["checkpoint"]
    assert fine.data.tags[T.TAG_STATUS] == "completed"

    client = client_for(uri)
    history = client.get_metric_history(fine.info.run_id, M.EVAL_RD_LOSS)
    steps = [m.step for m in history]
    assert steps == sorted(set(steps)) and steps[0] == 10 and steps[-1] == 50  # no step twice in MLflow
    first = min(history, key=lambda m: m.step).value
    config = json.loads(json.dumps({k: v for k, v in _config_of(experiment / "fine_tune").items()}))
    scratch = _scratch_first_eval(config)
    assert first < 0.5 * scratch, (first, scratch)  # the weights were loaded: far below a from-scratch start
    loaded = client.get_metric_history(fine.info.run_id, M.INIT_LOADED_TENSORS)
    assert loaded and loaded[0].value > 50


def _config_of(phase: Path) -> dict:
    (params,) = phase.glob("*/params.json")
    return json.loads(params.read_text())


def test_a_labelled_ladder_keeps_its_labels_in_the_fine_tune_phase(tmp_path: Path):
    """Variant labels on the model: the fine-tuned runs (model.init_from added) keep their variant's label in
    their run names, the lic_search.variant tag and the console, as the start points do."""
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.iterations": 2}},
                         name="labelled", resources={"cpus_per_trial": 1, "max_failures": 0})
    data = yaml.safe_load(space.read_text())
    data["trial"]["model"] = {"grid": [{"label": "narrow", "backbone": "mbt2018-mean", "N": 8, "M": 8},
                                       {"label": "wide", "backbone": "mbt2018-mean", "N": 16, "M": 8}]}
    data["trial"]["loss"]["lmbda"] = {"grid": [0.013, 0.0483]}
    data["trial"]["schedule"].update({"iterations": 4, "eval_every": 2, "lr": 1e-3})
    data["scheduler"] = {"type": "fifo"}
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    done = subprocess.run(LIC_SEARCH + ["run", str(space), "--storage-path", str(tmp_path / "results"),
                                        "--tracking-uri", uri], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = trial_runs(uri, "labelled")
    fine = [r for r in runs if r.data.tags.get(T.TAG_LADDER) == T.LADDER_FINE_TUNE]
    assert len(runs) == 4 and len(fine) == 2
    for run in runs:
        label = run.data.tags[T.TAG_VARIANT]
        assert label == ("wide" if run.data.params["model.N"] == "16" else "narrow")
        assert run.info.run_name.startswith(label)
    assert {r.data.tags[T.TAG_VARIANT] for r in fine} == {"narrow", "wide"}
    assert all(r.info.run_name.endswith("fine-tuned") for r in fine)
    completed = [line for line in done.stdout.splitlines() if " completed at 2/2 it" in line]  # the fine-tunes
    assert len(completed) == 2 and all(("narrow" in line) != ("wide" in line) for line in completed), completed
