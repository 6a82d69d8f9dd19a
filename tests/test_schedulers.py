"""Schedulers: stratified ASHA (rungs per λ, persisted across restore), stratified PBT, the builder.

Unit tests drive the schedulers with real ``ray.tune.experiment.Trial`` objects and
``on_trial_result`` calls, exactly as Ray's TuneController does; the ``ray_cluster`` tests run
real Ray Tune searches (a restore after an interrupt, PBT with checkpoints).
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from search.space.sections import (
    PBTMutations,
    SchedulerConfig,
    SearchAlgorithmConfig,
    stratify_keys,
)
from search.tuning.schedulers import (
    STATE_FILE,
    StratifiedASHA,
    StratifiedPBT,
    build_scheduler,
    stratum_key,
)
from tests.conftest import tiny_trial
from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.errors import LicSearchError

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def make_trial(trial_id: str, lmbda: float = 0.013, distortion: str = "mse", **overrides) -> Trial:
    config = tiny_trial(**{"loss.lmbda": lmbda, "loss.distortion": distortion, **overrides})
    return Trial("lic", config=config, trial_id=trial_id, stub=True)


def result(iteration: int, loss: float) -> dict:
    return {M.ITERATIONS: iteration, M.EVAL_RD_LOSS: loss}


def asha(**kwargs) -> StratifiedASHA:
    defaults = dict(metric=M.EVAL_RD_LOSS, mode="min", max_t=8, grace_period=1, reduction_factor=2)
    return StratifiedASHA(**{**defaults, **kwargs})


def feed(scheduler, trial: Trial, losses: dict[int, float]) -> list[str]:
    """Report ``{iteration: loss}`` in order; stop reporting at the first STOP, like Ray."""
    decisions = []
    for iteration, loss in sorted(losses.items()):
        decision = scheduler.on_trial_result(None, trial, result(iteration, loss))
        decisions.append(decision)
        if decision == STOP:
            break
    return decisions


def test_stratum_key_separates_lambda_and_distortion():
    low, high = make_trial("a", 0.0025), make_trial("b", 0.0483)
    keys = ("loss.lmbda", "loss.distortion")
    assert stratum_key(low.config, keys) == 'loss.lmbda=0.0025, loss.distortion="mse"'
    assert stratum_key(low.config, keys) != stratum_key(high.config, keys)
    assert stratum_key(make_trial("c", 0.0025, "ms-ssim").config, keys) != stratum_key(low.config, keys)
    # a key left out takes its TrialConfig default
    implicit = tiny_trial(**{"loss.lmbda": 0.0025})
    assert stratum_key(implicit, keys) == stratum_key(low.config, keys)
    # other keys (the things being searched) do not split strata
    assert stratum_key(make_trial("d", 0.0025, **{"schedule.lr": 5e-4}).config, keys) == stratum_key(low.config, keys)


def test_one_stratum_decides_exactly_like_ray_asha():
    """Within a stratum the rung rule is Ray's: same decisions on the same result stream."""
    rng = random.Random(0)
    ours, ray_asha = asha(), ASHAScheduler(time_attr=M.ITERATIONS, metric=M.EVAL_RD_LOSS, mode="min",
                                          max_t=8, grace_period=1, reduction_factor=2)
    decisions = {"ours": [], "ray": []}
    for index in range(12):
        trial = make_trial(f"t{index}")
        losses = {it: rng.uniform(0.5, 2.0) / it for it in range(1, 9)}
        for name, scheduler in (("ours", ours), ("ray", ray_asha)):
            scheduler.on_trial_add(None, trial)
            decisions[name].append(feed(scheduler, trial, losses))
    assert decisions["ours"] == decisions["ray"]
    assert sum(d[-1] == STOP and len(d) < 8 for d in decisions["ours"]) >= 4  # it did prune


def test_high_lambda_trial_is_never_stopped_by_low_lambda_results():
    """The issue's requirement: a high-rate trial (larger λ, much larger R-D loss) is compared
    only with high-rate trials, so the low-rate rungs never stop it."""
    ours = asha()
    stock = ASHAScheduler(time_attr=M.ITERATIONS, metric=M.EVAL_RD_LOSS, mode="min", max_t=8,
                          grace_period=1, reduction_factor=2)
    for index in range(4):  # ever better low-λ trials fill every rung with losses around 0.3
        low = make_trial(f"low{index}", 0.0025)
        losses = {it: loss - index / 100 for it, loss in {1: 0.5, 2: 0.4, 4: 0.35, 8: 0.3}.items()}
        for scheduler in (ours, stock):
            scheduler.on_trial_add(None, low)
            assert feed(scheduler, low, losses) == [CONTINUE, CONTINUE, CONTINUE, STOP]  # STOP = max_t
            scheduler.on_trial_complete(None, low, result(8, losses[8]))
    high = make_trial("high", 0.0483)
    high_losses = {1: 6.0, 2: 5.0, 4: 4.0, 8: 3.5}
    for scheduler in (ours, stock):
        scheduler.on_trial_add(None, high)
    # Ray's ASHA compares across λ and kills the high-rate trial at its first rung ...
    assert feed(stock, high, high_losses) == [STOP]
    # ... ours runs it to its budget (STOP at max_t only)
    assert feed(ours, high, high_losses) == [CONTINUE, CONTINUE, CONTINUE, STOP]
    assert "high" not in ours.stopped
    assert ours.stratum_of("high") != ours.stratum_of("low0")
    # and within the high-λ stratum ASHA still prunes: a worse high-λ trial is stopped at rung 1
    worse = make_trial("worse", 0.0483)
    ours.on_trial_add(None, worse)
    assert feed(ours, worse, {1: 9.0, 2: 8.0}) == [STOP]
    assert ours.stopped == {"worse": 1.0}
    # a low-λ trial is likewise judged only against low-λ records
    late_low = make_trial("late-low", 0.0025)
    ours.on_trial_add(None, late_low)
    assert feed(ours, late_low, {1: 0.9}) == [STOP]


def test_every_stratum_gets_its_own_rungs():
    ours = asha(stratify_by=("loss.lmbda",))
    for lmbda in (0.0025, 0.013, 0.0483):
        for index in range(3):
            trial = make_trial(f"{lmbda}-{index}", lmbda)
            ours.on_trial_add(None, trial)
            ours.on_trial_result(None, trial, result(1, 100 * lmbda + index))
    strata = ours.strata()
    assert sorted(strata) == ["loss.lmbda=0.0025", "loss.lmbda=0.013", "loss.lmbda=0.0483"]
    for key, brackets in strata.items():
        rung_1 = dict(brackets[0])[1.0]
        assert len(rung_1) == 3 and all(tid.startswith(key.split("=")[1]) for tid in rung_1)


def test_rungs_survive_a_restore_from_the_state_file(tmp_path: Path):
    state = tmp_path / "experiment" / STATE_FILE
    first = asha(state_path=str(state))
    pickled_at_start = pickle.dumps(first)  # what Tuner stores in tuner.pkl before fit()
    for index in range(3):
        good = make_trial(f"good{index}")
        first.on_trial_add(None, good)
        feed(first, good, {1: 0.5, 2: 0.4, 4: 0.3})
    saved = json.loads(state.read_text())
    assert saved["assignment"].keys() == {"good0", "good1", "good2"}
    (records,) = saved["strata"].values()
    assert {rung["milestone"]: sorted(rung["recorded"]) for rung in records[0]} == {
        8: [], 4: ["good0", "good1", "good2"], 2: ["good0", "good1", "good2"], 1: ["good0", "good1", "good2"]}

    restored = pickle.loads(pickled_at_start)  # Tuner.restore unpickles the pre-fit scheduler
    assert restored.strata() == {}
    bad = make_trial("bad")
    restored.on_trial_add(None, bad)  # the first trial added after restore loads the records
    assert dict(restored.strata()[stratum_key(bad.config, restored._stratify_by)][0])[1.0].keys() == {
        "good0", "good1", "good2"}
    assert feed(restored, bad, {1: 2.0}) == [STOP]  # stopped on records taken before the restore

    fresh = asha()  # without the records (Ray's behaviour, issue 30838) the same trial runs on
    fresh.on_trial_add(None, bad)
    assert feed(fresh, bad, {1: 2.0, 2: 1.9}) == [CONTINUE, CONTINUE]


def test_a_stop_decision_is_replayed_when_the_trial_resumes_from_an_older_checkpoint(tmp_path: Path):
    state = tmp_path / STATE_FILE
    first = asha(state_path=str(state))
    good, bad = make_trial("good"), make_trial("bad")
    for trial in (good, bad):
        first.on_trial_add(None, trial)
    feed(first, good, {1: 0.5, 2: 0.4})
    assert feed(first, bad, {1: 0.6}) == [STOP]
    second = asha(state_path=str(state))
    second.on_trial_add(None, bad)  # the driver died before Ray saved the STOP: bad runs again from iteration 0
    assert second.on_trial_result(None, bad, result(1, 0.1)) == STOP
    assert second.on_trial_result(None, good, result(4, 0.3)) == CONTINUE


def test_restore_refuses_a_different_stratification(tmp_path: Path):
    state = tmp_path / STATE_FILE
    first = asha(state_path=str(state))
    trial = make_trial("a")
    first.on_trial_add(None, trial)
    feed(first, trial, {1: 1.0})
    other = asha(state_path=str(state), stratify_by=("loss.lmbda",))
    with pytest.raises(LicSearchError, match="keep search.stratify_by unchanged"):
        other.on_trial_add(None, make_trial("b"))


def test_asha_needs_metric_and_valid_arguments():
    with pytest.raises(ValueError, match="grace_period <= max_t"):
        StratifiedASHA(max_t=4, grace_period=5)
    with pytest.raises(ValueError, match="reduction_factor"):
        StratifiedASHA(max_t=4, reduction_factor=1.0)
    scheduler = StratifiedASHA(max_t=4)
    with pytest.raises(LicSearchError, match="needs a metric and a mode"):
        scheduler.on_trial_add(None, make_trial("a"))
    assert scheduler.set_search_properties(M.EVAL_RD_LOSS, "min")
    scheduler.on_trial_add(None, make_trial("a"))


# ----------------------------------------------------------------------------- PBT (unit)
class _Controller:
    """The two attributes PBT's on_trial_add reads from the TuneController."""

    search_alg = None

    def __init__(self, trials):
        self._trials = trials

    def get_trials(self):
        return self._trials


def pbt(**kwargs) -> StratifiedPBT:
    mutations = PBTMutations(lr=(1e-5, 1e-2), milestones=[[0.5], [0.5, 0.9], [0.8]], gamma=[0.1, 0.5])
    defaults = dict(metric=M.EVAL_RD_LOSS, mode="min", perturbation_interval=2, mutations=mutations,
                    quantile_fraction=0.5)
    return StratifiedPBT(**{**defaults, **kwargs})


def test_pbt_ranks_trials_only_within_their_stratum():
    scheduler = pbt()
    trials = [make_trial(f"low{i}", 0.0025) for i in range(2)] + [make_trial(f"high{i}", 0.0483) for i in range(2)]
    for trial in trials:
        scheduler.on_trial_add(_Controller(trials), trial)
    scores = {"low0": 0.3, "low1": 0.4, "high0": 3.0, "high1": 4.0}
    for trial in trials:  # Ray stores mode-adjusted scores (each stratum's population is a stock Ray PBT)
        scheduler.population(trial)._trial_state[trial].last_score = -scores[trial.trial_id]
    for current, (lower, upper) in (("low", ("low1", "low0")), ("high", ("high1", "high0"))):
        bottom, top = scheduler.population(trials[0 if current == "low" else 2])._quantiles()
        assert [t.trial_id for t in bottom] == [lower] and [t.trial_id for t in top] == [upper]
    with pytest.raises(LicSearchError, match="strata must match"), scheduler.defaults_filled([trials[2]]):
        scheduler.population(trials[0])._get_new_config(trials[0], trials[2])


def test_pbt_keeps_a_trial_in_the_stratum_it_was_added_to_when_exploring_mutates_a_stratum_key():
    scheduler = pbt(stratify_by=("loss.lmbda", "schedule.milestones"))
    trials = [make_trial(f"t{i}", 0.0025, **{"schedule.milestones": [0.5]}) for i in range(2)]
    for trial in trials:
        scheduler.on_trial_add(_Controller(trials), trial)
    key = scheduler.stratum_of(trials[0])
    trials[0].config = {**trials[0].config, "schedule": {**trials[0].config["schedule"], "milestones": [0.8]}}
    assert scheduler.stratum_of(trials[0]) == key  # PBT mutated milestones: still its population's trial
    assert scheduler.on_trial_result(_Controller(trials), trials[0], result(1, 0.5)) == CONTINUE
    with scheduler.defaults_filled([trials[0]]):  # the mutated key may differ from the population's own value
        config, _ = scheduler.population(trials[1])._get_new_config(trials[1], trials[0])
    assert config["loss"]["lmbda"] == 0.0025


def test_pbt_mutations_always_give_valid_configs_within_bounds():
    random.seed(1)
    scheduler = pbt(resample_probability=0.3, perturbation_factors=(3.0, 0.2))
    parent = make_trial("parent", 0.0025, **{"schedule.lr": 9e-3, "schedule.milestones": [0.5, 0.9]})
    child = make_trial("child", 0.0025)
    seen = set()
    for _ in range(200):
        with scheduler.defaults_filled([parent]):  # what on_trial_result does around Ray's exploit
            config, operations = scheduler.population(child)._get_new_config(child, parent)
        checked = TrialConfig.model_validate(config)
        assert 1e-5 <= checked.schedule.lr <= 1e-2
        assert checked.schedule.milestones in ([0.5], [0.5, 0.9], [0.8])
        assert checked.schedule.gamma in (0.1, 0.5)
        assert checked.loss.lmbda == 0.0025 and checked.model.N == 8
        seen.add((round(checked.schedule.lr, 8), tuple(checked.schedule.milestones)))
        parent.config = config
    assert len(seen) > 20  # it does explore


# ----------------------------------------------------------------------------- builder
def spec_of(search: dict, scheduler: dict, budget: int = 6):
    file = SimpleNamespace(search=SearchAlgorithmConfig(**search), scheduler=SchedulerConfig(**scheduler),
                           trial=tiny_trial())
    return SimpleNamespace(file=file, budget=lambda: budget,
                           stratify_by=lambda: stratify_keys(file.search, file.scheduler, file.trial))


def test_build_scheduler_from_space_sections():
    fifo = build_scheduler(spec_of({}, {"type": "fifo"}))
    assert type(fifo) is FIFOScheduler
    built = build_scheduler(spec_of({"stratify_by": ["loss.lmbda"]},
                                    {"type": "asha", "grace_period": 2, "reduction_factor": 3}, budget=18))
    assert isinstance(built, StratifiedASHA)
    assert (built._max_t, built._grace_period, built._reduction_factor) == (18, 2, 3.0)
    assert built._stratify_by == ("loss.lmbda",) and built.metric == M.EVAL_RD_LOSS
    capped = build_scheduler(spec_of({}, {"type": "asha", "max_t": 4}, budget=18))
    assert capped._max_t == 4
    population = build_scheduler(spec_of({}, {"type": "pbt", "pbt": {
        "perturbation_interval": 2, "mutations": {"lr": [1e-5, 1e-3]}}}))
    assert isinstance(population, StratifiedPBT)
    assert population._perturbation_interval == 2 and population._time_attr == M.ITERATIONS
    assert set(population._hyperparam_mutations["schedule"]) == {"lr"}


def test_asha_compares_trials_only_at_equal_budget_when_budgets_vary():
    """A space with schedule.iterations {grid: [8, 16]} and milestones [0.5]: the 8-iteration trials
    decay their learning rate at 4, the 16-iteration one at 8, so at rung 4 the long trial's loss is
    naturally higher. build_scheduler stratifies by the budget and lets it run; ranked with the short
    trials (search.stratify_by alone) it is stopped at its first rung."""
    trial = tiny_trial(**{"schedule.iterations": {"grid": [8, 16]}, "schedule.milestones": [0.5]})
    file = SimpleNamespace(search=SearchAlgorithmConfig(), trial=trial,
                           scheduler=SchedulerConfig(type="asha", grace_period=2, reduction_factor=2))
    budgeted = build_scheduler(SimpleNamespace(file=file, budget=lambda: 16,
                                               stratify_by=lambda: stratify_keys(file.search, file.scheduler, trial)))
    budgeted._require_state = False  # fed hand-made trials with no experiment folder
    assert budgeted._stratify_by == ("loss.lmbda", "loss.distortion", "schedule.iterations")
    blind = asha(max_t=16, grace_period=2)  # stratified by the default keys only
    short_losses = {2: 1.0, 4: 0.6, 8: 0.4}  # decayed at 4
    long_losses = {2: 1.1, 4: 0.9, 8: 0.5, 16: 0.3}  # decays at 8, ends best
    for scheduler in (budgeted, blind):
        for index in range(3):
            short = make_trial(f"short{index}", **{"schedule.iterations": 8, "schedule.milestones": [0.5]})
            scheduler.on_trial_add(None, short)
            feed(scheduler, short, {it: loss - index / 100 for it, loss in short_losses.items()})
        scheduler.on_trial_add(None, make_trial("long", **{"schedule.iterations": 16, "schedule.milestones": [0.5]}))
    long = make_trial("long", **{"schedule.iterations": 16, "schedule.milestones": [0.5]})
    assert feed(blind, long, long_losses) == [STOP]
    assert feed(budgeted, long, long_losses) == [CONTINUE, CONTINUE, CONTINUE, STOP]  # STOP = max_t
    assert budgeted.stratum_of("long") != budgeted.stratum_of("short0")


# ----------------------------------------------------------------------------- scheduler section
@pytest.mark.parametrize("section, message", [
    ({"type": "pbt"}, "type pbt needs a `pbt` section"),
    ({"type": "fifo", "pbt": {"perturbation_interval": 2, "mutations": {"gamma": [0.1, 0.5]}}},
     "only goes with type pbt"),
    ({"type": "pbt", "pbt": {"perturbation_interval": 2, "mutations": {}}}, "name at least one of lr"),
    ({"type": "pbt", "pbt": {"perturbation_interval": 2, "mutations": {"lr": [1e-3, 1e-5]}}},
     r"`0 < low < high` must hold, but got \(low=0.001, high=1e-05\)"),
    ({"type": "pbt", "pbt": {"perturbation_interval": 2, "mutations": {"milestones": [[0.9, 0.5], [0.8]]}}},
     "increasing fractions"),
    ({"type": "pbt", "pbt": {"perturbation_interval": 2, "mutations": {"milestones": [[0.5]]}}},
     "at least two candidates"),
    ({"type": "pbt", "pbt": {"perturbation_interval": 0, "mutations": {"gamma": [0.1, 0.5]}}},
     "greater than or equal to 1"),
    ({"type": "asha", "grace_period": 4, "max_t": 2}, "must be at least grace_period"),
    ({"type": "hyperband"}, "'asha', 'fifo' or 'pbt'"),
    ({"type": "asha", "reduction_factor": 1}, "greater than 1"),
    ({"type": "asha", "grace": 1}, "Extra inputs are not permitted"),
])
def test_scheduler_section_errors_name_the_rule(section: dict, message: str):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        SchedulerConfig(**section)


@pytest.mark.parametrize("search, scheduler, trial_overrides, key_path, message", [
    ({"algorithm": "optuna"}, {"type": "pbt", "pbt": {"perturbation_interval": 2, "mutations": {"gamma": [0.1, 1]}}},
     {"schedule.lr": {"loguniform": [1e-5, 1e-3]}}, "scheduler.type", "cannot be combined with search.algorithm"),
    ({}, {"type": "asha"}, {"loss.lmbda": {"loguniform": [1e-3, 1e-1]}}, "trial.loss.lmbda",
     "continuous `loguniform` leaves every trial alone"),
    ({}, {"type": "asha", "grace_period": 7}, {}, "scheduler.grace_period", "must not exceed the iteration budget (6)"),
    ({}, {"type": "pbt", "pbt": {"perturbation_interval": 6, "mutations": {"gamma": [0.1, 1]}}}, {},
     "scheduler.pbt.perturbation_interval", "PBT never perturbs"),
])
def test_cross_section_checks_name_the_key_path(search, scheduler, trial_overrides, key_path, message):
    from search.errors import SpaceError
    from search.space.sections import check_search_setup

    with pytest.raises(SpaceError) as caught:
        check_search_setup(SearchAlgorithmConfig(**search), SchedulerConfig(**scheduler),
                           tiny_trial(**trial_overrides), budget=6, file="space.yaml")
    assert caught.value.key_path == key_path and caught.value.file == "space.yaml"
    assert message in str(caught.value)


def test_cross_section_checks_accept_finitely_many_lambda_strata():
    from search.space.sections import check_search_setup

    for scheduler in ({"type": "asha", "grace_period": 2}, {"type": "fifo"},
                      {"type": "pbt", "pbt": {"perturbation_interval": 2, "mutations": {"lr": [1e-5, 1e-2]}}}):
        for lmbda in ({"grid": [0.0025, 0.0483]}, {"choice": [0.0025, 0.0483]}, {"quniform": [0.01, 0.05, 0.01]}):
            check_search_setup(SearchAlgorithmConfig(), SchedulerConfig(**scheduler),
                               tiny_trial(**{"loss.lmbda": lmbda, "schedule.lr": {"choice": [1e-4, 1e-3]}}), budget=6)
    # opting out of strata explicitly is allowed (one rung record for all λ, Ray's behaviour)
    check_search_setup(SearchAlgorithmConfig(stratify_by=[]), SchedulerConfig(),
                       tiny_trial(**{"loss.lmbda": {"loguniform": [1e-3, 1e-1]}}), budget=6)


# ----------------------------------------------------------------------------- real Ray Tune searches
def synthetic_trainable(config: dict) -> None:
    """A stand-in for train_lic with a known loss: ``1000·λ·(quality + 1/iteration)``, checkpointed
    every iteration so a restored trial continues where it was. Only the scheduler is under test."""
    import os
    import tempfile

    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads(Path(folder, "state.json").read_text())["iteration"]
    lmbda, quality = config["loss"]["lmbda"], config["quality"]
    for iteration in range(start + 1, config["schedule"]["iterations"] + 1):
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"iteration": iteration}))
            tune.report({M.ITERATIONS: iteration, M.EVAL_RD_LOSS: 1000 * lmbda * (quality + 1 / iteration),
                         "pid": os.getpid()}, checkpoint=tune.Checkpoint.from_directory(folder))


class _InterruptAfter:
    """A Tune callback that interrupts the driver (SIGUSR1, as Ctrl+C would) after N finished trials."""

    def __new__(cls, count: int):
        from ray import tune

        class Interrupt(tune.Callback):
            def __init__(self):
                self.finished = 0

            def on_trial_complete(self, iteration, trials, trial, **info):
                import os
                import signal

                self.finished += 1
                if self.finished == count:
                    os.kill(os.getpid(), signal.SIGUSR1)

        return Interrupt()


@pytest.mark.slow
def test_asha_rungs_survive_tuner_restore(tmp_path: Path, ray_cluster):
    """ray#30838: after Tuner.restore the scheduler still holds the rungs recorded before the
    interruption, and stops a bad trial on them (stock ASHA would see an empty rung and let it run)."""
    from ray import tune

    space = {"loss": {"lmbda": 0.013, "distortion": "mse"}, "schedule": {"iterations": 8},
             "quality": tune.grid_search([1.1, 1.0, 5.0])}  # two ever better trials, then a bad one
    scheduler = asha(state_path=None)
    tuner = tune.Tuner(
        synthetic_trainable, param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, search_alg=BasicVariantGenerator(max_concurrent=1),
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="restore", storage_path=str(tmp_path), callbacks=[_InterruptAfter(2)],
                                  verbose=0),
    )
    first = tuner.fit()
    finished = {r.config["quality"]: r.metrics[M.ITERATIONS] for r in first if r.metrics}
    assert finished == {1.1: 8, 1.0: 8}  # interrupted before the bad trial reported anything
    saved = json.loads((tmp_path / "restore" / STATE_FILE).read_text())
    ((_, brackets),) = saved["strata"].items()
    assert {rung["milestone"]: len(rung["recorded"]) for rung in brackets[0]} == {8: 2, 4: 2, 2: 2, 1: 2}

    restored_tuner = tune.Tuner.restore(str(tmp_path / "restore"), trainable=synthetic_trainable,
                                        resume_unfinished=True)
    restored = restored_tuner._local_tuner._tune_config.scheduler
    assert restored is not scheduler and isinstance(restored, StratifiedASHA)
    second = restored_tuner.fit()
    reached = {r.config["quality"]: r.metrics[M.ITERATIONS] for r in second}
    assert reached == {1.1: 8, 1.0: 8, 5.0: 1}  # the bad trial stopped at the first rung
    ((_, rungs),) = restored.strata().items()
    rung_1 = dict(rungs[0])[1.0]
    assert len(rung_1) == 3 and set(restored.stopped) == {next(r.metrics["trial_id"] for r in second
                                                               if r.config["quality"] == 5.0)}


def schedule_trainable(config: dict, log: str = "") -> None:
    """A stand-in for train_lic under PBT: progress ``w`` grows by ``lr``-dependent steps, the loss is
    ``1000·λ/(1 + w)``. The checkpoint carries the λ and lr it was written with, and every report is
    also appended to ``log``, so a clone (weights of another trial) is visible."""
    import tempfile
    import time

    from ray import tune

    log = Path(log)
    lmbda, lr = config["loss"]["lmbda"], config["schedule"]["lr"]
    state = {"iteration": 0, "w": 0.0, "lmbda": lmbda, "lr": lr}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads(Path(folder, "state.json").read_text())
    else:  # a barrier, so that the whole population trains at the same time on a busy machine
        Path(log.parent, f"started-{lmbda}-{lr}").touch(exist_ok=True)
        deadline = time.time() + 60
        while len(list(log.parent.glob("started-*"))) < 4 and time.time() < deadline:
            time.sleep(0.1)
    restored_from = {"lmbda": state["lmbda"], "lr": state["lr"], "iteration": state["iteration"]}
    for iteration in range(state["iteration"] + 1, config["schedule"]["iterations"] + 1):
        time.sleep(0.2)
        state.update(iteration=iteration, w=state["w"] + 1e3 * lr, lmbda=lmbda, lr=lr)
        with log.open("a") as handle:
            handle.write(json.dumps({"lmbda": lmbda, "lr": lr, "iteration": iteration,
                                     "restored_from": restored_from}) + "\n")
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps(state))
            tune.report({M.ITERATIONS: iteration, M.EVAL_RD_LOSS: 1000 * lmbda / (1 + state["w"])},
                        checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_pbt_clones_and_perturbs_only_within_a_lambda_stratum(tmp_path: Path, ray_cluster):
    """Two λ x two lr, all running at once. Stock PBT would rank the 20x larger high-λ losses last
    and clone low-λ weights into them; ours clones and perturbs only within each λ."""
    from ray import tune

    spec = spec_of({}, {"type": "pbt", "pbt": {"perturbation_interval": 2, "quantile_fraction": 0.5,
                                               "mutations": {"lr": [1e-5, 1e-2]}}}, budget=8)
    scheduler = build_scheduler(spec)
    log = tmp_path / "population" / "reports.jsonl"
    log.parent.mkdir()
    space = tiny_trial(**{"loss.lmbda": tune.grid_search([0.0025, 0.0483]),
                          "schedule.lr": tune.grid_search([1e-5, 1e-3]), "schedule.iterations": 8})
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(schedule_trainable, log=str(log)), {"cpu": 0.5}),
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name="pbt", storage_path=str(tmp_path), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
    )
    results = tuner.fit()
    assert len(results) == 4 and not any(r.error for r in results)
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(r["restored_from"]["lmbda"] == r["lmbda"] for r in reports)  # never another λ's weights
    clones = [r for r in reports if r["restored_from"]["iteration"] > 0 and r["restored_from"]["lr"] != r["lr"]]
    assert clones  # a weak trial took a strong one's checkpoint with a perturbed learning rate
    assert {r["lr"] for r in reports} - {1e-5, 1e-3}  # new learning rates were explored
    for outcome in results:
        checked = TrialConfig.model_validate(outcome.config)
        assert 1e-5 <= checked.schedule.lr <= 1e-2 and checked.loss.lmbda in (0.0025, 0.0483)


@pytest.mark.slow
def test_real_two_lambda_search_never_stops_the_high_rate_trial_on_low_rate_rungs(tmp_path: Path, ray_cluster):
    """train_lic at λ=0.0025 then at λ=0.0483 (one at a time): the high-rate trial's R-D loss is far
    above the low-rate rung records, which would stop it under Ray's ASHA; ours runs it to its budget."""
    from ray import tune

    from trainables.training.trainable import train_lic

    spec = spec_of({}, {"type": "asha", "grace_period": 2, "reduction_factor": 2}, budget=6)
    scheduler = build_scheduler(spec)
    space = tiny_trial(**{"loss.lmbda": tune.grid_search([0.0025, 0.0483]), "schedule.eval_every": 2,
                          "model.auxt.enabled": False})
    tuner = tune.Tuner(
        train_lic, param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, search_alg=BasicVariantGenerator(max_concurrent=1),
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="two-lambda", storage_path=str(tmp_path), verbose=0),
    )
    results = {r.config["loss"]["lmbda"]: r for r in tuner.fit()}
    assert not any(r.error for r in results.values())
    low, high = results[0.0025], results[0.0483]
    assert low.metrics[M.ITERATIONS] == high.metrics[M.ITERATIONS] == 6  # both ran their budget
    low_history, high_history = low.metrics_dataframe, high.metrics_dataframe
    at_rung_2 = {name: float(h.loc[h[M.ITERATIONS] == 2, M.EVAL_RD_LOSS].iloc[0])
                 for name, h in (("low", low_history), ("high", high_history))}
    assert at_rung_2["high"] > 2 * at_rung_2["low"]  # stock ASHA (cutoff = the low record) would stop it
    strata = scheduler.strata()
    assert len(strata) == 2 and scheduler.stopped == {}
    for key, lmbda in (('loss.lmbda=0.0025, loss.distortion="mse"', 0.0025),
                       ('loss.lmbda=0.0483, loss.distortion="mse"', 0.0483)):
        rung_2 = dict(strata[key][0])[2.0]
        assert list(rung_2) == [results[lmbda].metrics["trial_id"]]
        assert rung_2[results[lmbda].metrics["trial_id"]] == pytest.approx(-at_rung_2["low" if lmbda < 0.01 else "high"])


def test_describe_setup_lines():
    from search.space.sections import describe_setup

    lines = describe_setup(SearchAlgorithmConfig(algorithm="optuna", objectives=[M.EVAL_BPP, M.EVAL_PSNR]),
                           SchedulerConfig(grace_period=2), budget=100)
    assert lines == [
        "search: optuna tpe, one study per grid point; num_samples 1, max_concurrent unlimited, "
        "objectives eval/bpp min, eval/psnr max (the metrics' natural directions), seed None",
        "strata: trials are compared only at equal loss.lmbda, loss.distortion",
        "scheduler: asha per stratum, grace_period 2, reduction_factor 2, brackets 1, max_t 100; "
        "rungs persist across resume",
    ]
    pbt_lines = describe_setup(SearchAlgorithmConfig(stratify_by=[]), SchedulerConfig(type="pbt", pbt={
        "perturbation_interval": 5, "mutations": {"lr": [1e-5, 1e-3]}}), budget=100)
    assert pbt_lines[1] == "strata: none (every trial is compared with every other)"
    assert pbt_lines[2] == ("scheduler: pbt per stratum, every 5 iterations (burn-in 0), the bottom 0.25 clones "
                            "the top; mutates schedule.lr (1e-05, 0.001)")


def test_a_search_scheduler_that_cannot_keep_its_rungs_says_so():
    """The rung records are what a resumed search prunes against: a search's ASHA (built by build_scheduler)
    that finds no experiment folder stops with an error instead of logging a warning and forgetting them."""
    scheduler = asha(require_state=True)
    trial = make_trial("lost")  # a hand-made trial: no storage context, so no experiment folder
    with pytest.raises(LicSearchError, match="no experiment folder to keep the rung records"):
        scheduler.on_trial_add(None, trial)
    free, unpersisted = make_trial("free"), asha()  # library use (no search): a warning, and it goes on
    unpersisted.on_trial_add(None, free)
    assert unpersisted.on_trial_result(None, free, result(1, 0.5)) == CONTINUE


def test_notices_between_evaluations_leave_asha_and_pbt_alone():
    """A checkpoint between evaluations reports NaN scores (Ray wants the metric in every result): ASHA would stop
    a trial on NaN and PBT would rank it; both skip notices and decide on the evaluations alone."""
    from trainables.training.trainable import notice_result

    scheduler, trial = asha(), make_trial("t")
    assert scheduler.on_trial_result(None, trial, notice_result(M.NOTICE_CHECKPOINT, 3)) == CONTINUE
    assert scheduler.on_trial_result(None, trial, notice_result(M.NOTICE_PREEMPTED, 5)) == CONTINUE
    assert trial.trial_id not in scheduler._stopped
    assert feed(scheduler, trial, {1: 1.0, 2: 0.9}) == [CONTINUE, CONTINUE]
    population = pbt()
    trials = [make_trial("p0"), make_trial("p1")]
    for each in trials:
        population.on_trial_add(_Controller(trials), each)
    assert population.on_trial_result(_Controller(trials), trials[0], notice_result(M.NOTICE_CHECKPOINT, 4)) == CONTINUE
    assert population.population(trials[0])._trial_state[trials[0]].last_score is None
