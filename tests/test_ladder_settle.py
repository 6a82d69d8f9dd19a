"""Issue 34 without Ray: the settle rule of a ladder's fine-tunes (the rule, its stopper, the `ladder.settle`
section, `estimate`'s assumption) and the warning for a bunched ladder family."""

from __future__ import annotations

import pytest

from search.analysis.bunching import LadderPoint, bunched_warning
from search.errors import SpaceError
from search.space import load_space
from search.tuning.settle import SettleStopper, settled
from tests.test_ladder_space import ladder_space
from trainables import metrics as M


def _evals(*pairs, every=10):
    return [{M.EVAL_BPP: bpp, M.EVAL_RD_LOSS: loss, M.ITERATIONS: every * (i + 1)}
            for i, (bpp, loss) in enumerate(pairs)]


def test_settled_needs_both_metrics_within_the_tolerance_over_the_window():
    moving_rate = _evals((1.40, 2.0), (1.30, 2.0), (1.20, 2.0))  # bpp moves 17%, loss flat
    assert settled(moving_rate, 2.0, 3) is None
    flat = _evals((1.40, 2.0), (1.200, 1.990), (1.210, 1.985), (1.205, 1.980))
    assert settled(flat[:2], 2.0, 3) is None  # fewer evaluations than the window
    assert settled(flat, 2.0, 3) == ("settled at iteration 40: eval/bpp and eval/rd_loss changed less than 2% "
                                     "over the last 3 evaluations")
    assert settled(flat, 0.5, 3) is None  # bpp spans 0.010/1.205 = 0.83% > 0.5%
    assert settled(_evals((1.2, float("nan")), (1.2, 2.0)), 5.0, 2) is None  # a non-finite value never settles


def test_stopper_stops_a_settled_trial_records_why_and_ignores_notices(capsys):
    stopper = SettleStopper(tolerance=1.0, evaluations=2)
    first, second, third = _evals((0.50, 1.00), (0.40, 0.90), (0.401, 0.901))
    assert stopper("t1", first) is False
    assert stopper("t1", {M.ITERATIONS: 25, M.NOTICE: M.NOTICE_CHECKPOINT}) is False  # a notice is no evaluation
    assert stopper("t2", second) is False  # another trial's history is its own
    assert stopper("t1", second) is False
    assert stopper("t1", third) is True
    assert stopper.reasons == {"t1": "settled at iteration 30: eval/bpp and eval/rd_loss changed less than 1% over "
                                     "the last 2 evaluations"}
    assert "ladder: fine-tune t1 settled at iteration 30" in capsys.readouterr().out
    assert stopper.stop_all() is False



def test_the_phase_folder_keeps_why_each_fine_tune_settled_across_drivers(tmp_path):
    """What ``status`` and the live view read: ``settled.json`` in the fine-tune phase's folder, written when a
    trial settles, kept by a resumed driver (whose stopper starts from it), never pickled with Tune's state."""
    import pickle

    from search.experiment import settled as settled_record
    from search.experiment.store import ExperimentStore
    from search.space import load_space
    from search.tuning.ladder import phase_store, settle_stopper

    spec = load_space(ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.iterations": 30},
                                              "settle": {"tolerance": 1.0, "evaluations": 2}}))
    phase = phase_store(ExperimentStore(tmp_path / "results" / "ladder"))
    assert settled_record.load(phase) == {}
    first, second = _evals((0.40, 0.90), (0.401, 0.901))
    stopper = settle_stopper(spec, phase)
    assert stopper("t1", first) is False and stopper("t1", second) is True
    why = "settled at iteration 20: eval/bpp and eval/rd_loss changed less than 1% over the last 2 evaluations"
    assert settled_record.load(phase) == {"t1": why}
    assert pickle.loads(pickle.dumps(stopper)).on_settle is None  # Tune pickles its stopper with the state
    resumed = settle_stopper(spec, phase)  # a later driver: t1 stays settled, t2 settles beside it
    assert resumed("t2", first) is False and resumed("t2", second) is True
    assert settled_record.load(phase) == {"t1": why, "t2": why}

SETTLE_BAD = {
    "tolerance_zero": ({"tolerance": 0}, "ladder.settle.tolerance", "must be a number > 0 and < 100, but got 0"),
    "one_evaluation": ({"tolerance": 2, "evaluations": 1}, "ladder.settle.evaluations",
                       "must be an integer >= 2, but got 1"),
    "unknown_key": ({"tolerance": 2, "patience": 3}, "ladder.settle.patience",
                    "unknown key 'patience'; valid keys here: tolerance, evaluations"),
    "never_enough_evaluations": ({"tolerance": 2, "evaluations": 5}, "ladder.settle.evaluations",
                                 "a fine-tune of 30 iterations evaluates 3 time(s) (every 10), so it could never "
                                 "see 5 evaluations settle"),
}


@pytest.mark.parametrize("case", sorted(SETTLE_BAD))
def test_bad_settle_sections_are_refused_at_their_key_path(tmp_path, case):
    settle, where, message = SETTLE_BAD[case]
    path = ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483}, "settle": settle,
                                   "fine_tune": {"schedule.iterations": 30, "schedule.lr": 5e-4}})
    with pytest.raises(SpaceError) as refused:
        load_space(path)
    assert refused.value.key_path == where and message in str(refused.value), str(refused.value)
    assert str(refused.value).startswith(str(path))


def test_settle_section_is_described_listed_and_priced(tmp_path, capsys):
    from search.cli import main

    path = ladder_space(tmp_path, {"start": {"loss.lmbda": 0.0483}, "settle": {"tolerance": 1.5},
                                   "fine_tune": {"schedule.iterations": 30, "schedule.lr": 5e-4}})
    spec = load_space(path)
    assert spec.file.ladder.settle.evaluations == 3  # the default window
    assert ("ladder settle: a fine-tune ends once eval/bpp and eval/rd_loss of its last 3 evaluations lie within "
            "1.5% of the latest") in spec.describe()
    assert main(["validate", "--keys"]) == 0
    keys = capsys.readouterr().out
    assert "ladder.settle.tolerance: a number > 0 and < 100; required." in keys
    assert "ladder.settle.evaluations: an integer >= 2; default 3." in keys
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "1", "--launch", "5"]) == 0
    out = capsys.readouterr().out
    assert "80 + 180 = 260 iterations" in out  # the fine-tunes at their cap: 6 x 30
    assert ("fine-tunes priced at their cap (ladder.fine_tune schedule.iterations): the settle rule (ladder.settle: "
            "1.5% over 3 evaluations) ends each one when its rate has settled, so they cost at most this") in out


def test_bunched_ladder_family_is_named_a_spread_one_is_not():
    # Issue 34's descending ladder: λ 0.0035 fine-tuned from the λ 0.0483 start point stayed at 1.387 bpp.
    bunched = [LadderPoint(0.0483, 2.675, False), LadderPoint(0.0035, 1.387, True)]
    assert bunched_warning("F1", bunched) == (
        "ladder family F1 is bunched: its rates span 1.93× over a 13.8× λ range (start point λ 0.0483 at 2.675 bpp, "
        "fine-tuned λ 0.0035 at 1.387 bpp): its points sit near the start point's rate, not on an R-D curve; fine-tune "
        "longer (ladder.fine_tune) or until the rate settles (ladder.settle)")
    spread = [LadderPoint(0.0483, 2.675, False), LadderPoint(0.0035, 0.40, True)]  # 6.7× over 13.8×
    assert bunched_warning("F1", spread) is None
    scratch = [LadderPoint(0.0483, 2.675, False), LadderPoint(0.0035, 2.0, False)]  # no fine-tuned point: not judged
    assert bunched_warning("F1", scratch) is None
    assert bunched_warning("F1", [LadderPoint(0.0483, 2.6, False), LadderPoint(0.0483, 2.5, True)]) is None
