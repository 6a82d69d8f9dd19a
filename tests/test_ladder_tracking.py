"""MlflowTrialLogger in a ladder, driven hook by hook (no Ray run): the warm-start tags, the start point's
family on its fine-tuned trials, the start point's list of children, and the keys a partial warm start kept."""

from __future__ import annotations

import json

from search.experiment.ladder_plan import LadderFamily, LadderPlan
from search.tracking import names as T
from search.tracking.trial_logger import MlflowTrialLogger
from tests.conftest import tiny_trial
from tests.test_tracking_pbt import Trial, store  # noqa: F401  (the fixture)
from trainables import metrics as M


def test_fine_tuned_runs_name_their_start_and_the_start_its_children(store):  # noqa: F811
    uri, client, parent = store
    logger = MlflowTrialLogger(uri, "pbt", parent)
    logger.ladder_role = T.LADDER_START
    start = Trial("start", tiny_trial(**{"loss.lmbda": 0.0483}))
    logger.on_trial_start(0, [], start)
    start_run = logger.run_ids()["start"]
    start_tags = client.get_run(start_run).data.tags

    checkpoint = "/results/ladder/train_lic_indexed_abcde_00000_0_x/checkpoint_000002"
    logger.ladder_role = T.LADDER_FINE_TUNE
    logger.ladder_plan = LadderPlan([LadderFamily("start", "auxt=haar", start_tags[T.TAG_FAMILY], checkpoint)])
    children = []
    for index, lmbda in enumerate((0.013, 0.025)):
        config = tiny_trial(**{"loss.lmbda": lmbda, "schedule.iterations": 3, "model.init_from": checkpoint})
        child = Trial(f"fine{index}", config)
        logger.on_trial_start(0, [], child)
        logger.on_trial_result(0, [], child, {M.ITERATIONS: 3, M.EVAL_RD_LOSS: 1.0, M.INIT_LOADED_TENSORS: 90,
                                              M.INIT_KEPT_TENSORS: 2, M.INIT_KEPT_KEYS: "a.branch.0,a.branch.1"})
        children.append(child.trial_id)
        run = client.get_run(logger.run_ids()[child.trial_id])
        origin = json.loads(run.data.tags[T.TAG_INIT_FROM])
        assert origin == {"checkpoint": checkpoint, "start_trial": "start", "start_run": start_run}
        assert run.data.tags[T.TAG_LADDER] == T.LADDER_FINE_TUNE
        assert run.data.tags[T.TAG_FAMILY] == start_tags[T.TAG_FAMILY]  # the start point's family, not its own
        assert run.data.tags[T.TAG_INIT_KEPT] == "a.branch.0,a.branch.1"
        assert run.data.metrics[M.INIT_LOADED_TENSORS] == 90 and run.info.run_name.endswith("fine-tuned")
    tags = client.get_run(start_run).data.tags
    assert tags[T.TAG_LADDER] == T.LADDER_START and json.loads(tags[T.TAG_LADDER_CHILDREN]) == children
