"""MlflowTrialLogger across PBT exploits and driver restarts, driven hook by hook (no Ray run needed).

The trials are stand-ins with what the logger reads from Ray's Trial: id, config and the
latest checkpoint result (its writer's trial id and iteration)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from search.tracking import names as T
from search.tracking.client import client_for
from search.tracking.trial_logger import MlflowTrialLogger
from tests.conftest import tiny_trial
from trainables import metrics as M


class Trial:
    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config
        self.latest_checkpoint_result = None
        self.path = f"/results/pbt/{trial_id}"
        self.last_result: dict = {}

    def checkpoint_from(self, writer: str, iteration: int) -> None:
        self.latest_checkpoint_result = SimpleNamespace(
            checkpoint=SimpleNamespace(path=f"/results/pbt/{writer}/checkpoint_{iteration:06d}"),
            metrics={"trial_id": writer, M.ITERATIONS: iteration})

    def __str__(self) -> str:
        return self.trial_id


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    experiment_id = client.create_experiment("pbt", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={T.TAG_ROLE: T.ROLE_SEARCH}).info.run_id
    return uri, client, parent


def _report(logger, trial, step: int, loss: float) -> None:
    logger.on_trial_result(0, [], trial, {M.ITERATIONS: step, M.EVAL_RD_LOSS: loss, "trial_id": trial.trial_id})


def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((int(m.step), m.value) for m in client.get_metric_history(run_id, metric))


def test_exploit_opens_a_branch_and_a_restart_continues_it_without_duplicates(store):
    uri, client, parent = store
    trial = Trial("a", tiny_trial(**{"schedule.iterations": 12}))
    logger = MlflowTrialLogger(uri, "pbt", parent)
    logger.on_trial_start(0, [], trial)
    for step, loss in ((2, 1.0), (4, 0.9), (6, 0.8)):
        _report(logger, trial, step, loss)
    run_id = logger._runs["a"]

    # PBT exploit: b's checkpoint at iteration 4, a perturbed learning rate
    trial.config = copy.deepcopy(trial.config)
    trial.config["schedule"]["lr"] = 2e-3
    trial.checkpoint_from("b", 4)
    logger.on_trial_start(0, [], trial)
    _report(logger, trial, 6, 0.5)
    trial.checkpoint_from("a", 6)
    _report(logger, trial, 8, 0.4)

    tags = client.get_run(run_id).data.tags
    assert tags[T.TAG_GENERATION] == "1" and tags[T.TAG_HPARAM_PREFIX + "schedule.lr"] == "0.002"
    branch = json.loads(tags[T.TAG_BRANCH])
    assert (branch["generation"], branch["cloned_from"], branch["at_iteration"]) == (1, "b", 4)
    # the branch's history is logged from the cloned iteration on: step 6 of both branches is there
    assert _history(client, run_id, M.EVAL_RD_LOSS) == [(2, 1.0), (4, 0.9), (6, 0.5), (6, 0.8), (8, 0.4)]
    assert _history(client, run_id, T.METRIC_GENERATION) == [(6, 1.0), (8, 1.0)]
    assert _history(client, run_id, T.METRIC_HPARAM_PREFIX + "schedule.lr") == [(6, 2e-3), (8, 2e-3)]
    assert client.get_run(run_id).data.params["schedule.lr"] == "0.001"  # params keep the first value

    # driver crash and resume: a fresh logger, the trial restarts from its own checkpoint at 6
    # and recomputes 8 exactly: 8 is not logged again, 10 is, still in generation 1
    resumed = MlflowTrialLogger(uri, "pbt", parent)
    resumed.on_trial_start(0, [], trial)
    _report(resumed, trial, 8, 0.4)
    _report(resumed, trial, 10, 0.3)
    assert _history(client, run_id, M.EVAL_RD_LOSS)[-3:] == [(6, 0.8), (8, 0.4), (10, 0.3)]
    assert _history(client, run_id, T.METRIC_GENERATION) == [(6, 1.0), (8, 1.0), (10, 1.0)]
    assert client.get_run(run_id).data.tags[T.TAG_GENERATION] == "1"


def test_restart_before_the_branch_reported_is_the_same_branch(store):
    uri, client, parent = store
    trial = Trial("a", tiny_trial())
    logger = MlflowTrialLogger(uri, "pbt", parent)
    logger.on_trial_start(0, [], trial)
    _report(logger, trial, 2, 1.0)
    _report(logger, trial, 4, 0.9)
    trial.config = copy.deepcopy(trial.config)
    trial.config["schedule"]["gamma"] = 0.5
    trial.checkpoint_from("b", 2)
    logger.on_trial_start(0, [], trial)
    _report(logger, trial, 4, 0.7)

    # resume while the latest checkpoint is still b's: the recorded branch, not a third one;
    # the restored trial re-reports 4 (already there) and goes on
    resumed = MlflowTrialLogger(uri, "pbt", parent)
    resumed.on_trial_start(0, [], trial)
    _report(resumed, trial, 4, 0.7)
    _report(resumed, trial, 6, 0.6)
    run_id = resumed._runs["a"]
    assert client.get_run(run_id).data.tags[T.TAG_GENERATION] == "1"
    assert _history(client, run_id, M.EVAL_RD_LOSS) == [(2, 1.0), (4, 0.7), (4, 0.9), (6, 0.6)]
    assert _history(client, run_id, T.METRIC_HPARAM_PREFIX + "schedule.gamma") == [(4, 0.5), (6, 0.5)]


def test_trials_without_pbt_log_no_branch_metrics(store):
    uri, client, parent = store
    trial = Trial("a", tiny_trial())
    logger = MlflowTrialLogger(uri, "pbt", parent)
    logger.on_trial_start(0, [], trial)
    _report(logger, trial, 2, 1.0)
    trial.checkpoint_from("a", 2)  # a retry from its own checkpoint
    logger.on_trial_start(0, [], trial)
    _report(logger, trial, 2, 1.0)
    _report(logger, trial, 4, 0.9)
    run = client.get_run(logger._runs["a"])
    assert T.TAG_GENERATION not in run.data.tags and T.METRIC_GENERATION not in run.data.metrics
    assert _history(client, run.info.run_id, M.EVAL_RD_LOSS) == [(2, 1.0), (4, 0.9)]
