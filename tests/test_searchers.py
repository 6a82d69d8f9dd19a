"""Search algorithms: one Optuna study per grid point (λ strata), stopped trials PRUNED, the builder.

Unit tests drive the searchers with real Optuna studies through Ray's Searcher interface
(``suggest`` / ``on_trial_result`` / ``on_trial_complete``), as Ray's SearchGenerator does.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from pydantic import ValidationError
from ray import tune
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search.errors import SpaceError
from search.space.keypath import get_path
from search.space.sections import SchedulerConfig, SearchAlgorithmConfig, check_search_setup, stratify_keys
from search.tuning.searchers import (
    RAY_TRIAL_ID,
    StratifiedOptunaSearch,
    build_search_algorithm,
    grid_cells,
    tune_num_samples,
    tuner_param_space,
)
from tests.conftest import tiny_trial
from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.errors import LicSearchError

COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL


def ray_space(**overrides) -> dict:
    """tiny_trial() as a Ray param space: a λ grid and a sampled learning rate unless overridden."""
    values = {"loss.lmbda": tune.grid_search([0.0025, 0.0483]), "schedule.lr": tune.loguniform(1e-5, 1e-2)}
    return tiny_trial(**{**values, **overrides})


def evaluation(iteration: int, loss: float, bpp: float = 0.5, mse: float = 0.01) -> dict:
    return {M.ITERATIONS: iteration, M.EVAL_RD_LOSS: loss, M.EVAL_BPP: bpp, M.EVAL_MSE: mse}


# ----------------------------------------------------------------------------- grid cells
def test_grid_cells_expand_every_grid_including_grids_inside_grid_values():
    space = ray_space(**{"model.auxt": tune.grid_search([
        {"enabled": False}, {"enabled": True, "wavelet": tune.grid_search(["haar", "db2"])}])})
    cells = grid_cells(space)
    labels = [cell for cell, _ in cells]
    assert len(cells) == 2 * 3
    assert {"loss.lmbda": 0.0483, "model.auxt": {"enabled": True, "wavelet": "db2"}} in labels
    for _, config in cells:  # grids resolved, the sampled lr left for Optuna
        assert isinstance(config["loss"]["lmbda"], float) and "grid_search" not in str(config)
        assert isinstance(config["schedule"]["lr"], tune.search.sample.Float)


def test_optuna_runs_one_study_per_grid_point_and_proposes_whole_valid_configs():
    searcher = StratifiedOptunaSearch(ray_space(), metric=M.EVAL_RD_LOSS, mode="min", samples_per_cell=3, seed=0)
    configs = {}
    for index in range(6):
        configs[f"t{index}"] = searcher.suggest(f"t{index}")
    assert searcher.suggest("t6") == Searcher.FINISHED  # grid points x num_samples, like random search
    lambdas = [config["loss"]["lmbda"] for config in configs.values()]
    assert lambdas == [0.0025, 0.0483] * 3  # round-robin over the strata
    for config in configs.values():
        checked = TrialConfig.model_validate(config)  # complete: constants, grid value, sampled lr
        assert 1e-5 <= checked.schedule.lr <= 1e-2 and checked.model.N == 8
    assert searcher.suggest("t0") == configs["t0"]  # asking again for a known trial is idempotent
    studies = searcher.studies()
    assert [cell for cell, _ in studies] == [{"loss.lmbda": 0.0025}, {"loss.lmbda": 0.0483}]
    assert [len(study.trials) for _, study in studies] == [3, 3]


def test_each_lambda_study_only_sees_losses_of_its_lambda():
    searcher = StratifiedOptunaSearch(ray_space(), metric=M.EVAL_RD_LOSS, mode="min", samples_per_cell=2, seed=1)
    for index in range(4):
        trial_id = f"t{index}"
        config = searcher.suggest(trial_id)
        loss = 1000 * config["loss"]["lmbda"] + index  # high-λ losses are ~20x larger
        searcher.on_trial_result(trial_id, evaluation(6, loss))
        searcher.on_trial_complete(trial_id, evaluation(6, loss))
    (low_cell, low), (high_cell, high) = searcher.studies()
    assert sorted(t.value for t in low.trials) == pytest.approx([2.5, 4.5])
    assert sorted(t.value for t in high.trials) == pytest.approx([49.3, 51.3])
    assert (low.best_value, high.best_value) == pytest.approx((2.5, 49.3))  # each λ has its own best


def test_stopped_trials_reach_optuna_as_pruned_and_finished_ones_as_complete():
    searcher = StratifiedOptunaSearch(ray_space(**{"loss.lmbda": 0.013}), metric=M.EVAL_RD_LOSS, mode="min",
                                      samples_per_cell=4, seed=0)
    for trial_id in ("done", "stopped", "errored", "removed"):
        searcher.suggest(trial_id)
    for iteration, loss in ((3, 2.0), (6, 1.5)):
        searcher.on_trial_result("done", evaluation(iteration, loss))
    searcher.on_trial_complete("done", evaluation(6, 1.5))
    # ASHA's STOP: Ray does not pass the stopping result to on_trial_result, only to on_trial_complete
    searcher.on_trial_complete("stopped", evaluation(3, 4.0))
    searcher.on_trial_complete("errored", error=True)
    searcher.on_trial_complete("removed")  # a pending trial removed when the search ends
    ((_, study),) = searcher.studies()
    states = {t.number: t for t in study.trials}
    done, stopped, errored, removed = (states[i] for i in range(4))
    assert (done.state, done.value, done.intermediate_values) == (COMPLETE, 1.5, {3: 2.0, 6: 1.5})
    assert (stopped.state, stopped.value, stopped.intermediate_values) == (PRUNED, 4.0, {3: 4.0})
    assert errored.state == FAIL and removed.state == PRUNED
    # the stock Ray searcher would have recorded the stopped trial as a finished one
    stock = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric=M.EVAL_RD_LOSS,
                         mode="min", seed=0)
    stock.suggest("stopped")
    stock.on_trial_complete("stopped", evaluation(3, 4.0))
    assert stock._ot_study.trials[0].state == COMPLETE


def test_pruned_trials_do_not_count_as_complete_for_tpe():
    """With a PRUNED early loss, TPE's best is the best *finished* trial, not an early-stopped one."""
    searcher = StratifiedOptunaSearch(ray_space(**{"loss.lmbda": 0.013}), metric=M.EVAL_RD_LOSS, mode="min",
                                      samples_per_cell=2, seed=0)
    searcher.suggest("early")
    searcher.on_trial_complete("early", evaluation(1, 0.1))  # stopped at iteration 1 of 6 with a small loss
    searcher.suggest("full")
    searcher.on_trial_complete("full", evaluation(6, 0.5))
    ((_, study),) = searcher.studies()
    assert [t.state for t in study.trials] == [PRUNED, COMPLETE]
    assert study.best_trial.number == 1 and study.best_value == 0.5


def test_multi_objective_over_rate_and_distortion():
    space = ray_space(**{"loss.lmbda": tune.loguniform(1e-3, 1e-1)})  # λ may be sampled: bpp and mse do not depend on it
    for sampler in ("tpe", "nsga2"):
        searcher = StratifiedOptunaSearch(space, metric=[M.EVAL_BPP, M.EVAL_MSE], mode=["min", "min"],
                                          samples_per_cell=3, sampler=sampler, seed=0, startup_trials=2)
        for index, (bpp, mse) in enumerate(((0.2, 0.01), (0.4, 0.005), (0.3, 0.02))):
            config = searcher.suggest(f"t{index}")
            assert 1e-3 <= config["loss"]["lmbda"] <= 1e-1
            reached = 6 if index < 2 else 3
            searcher.on_trial_result(f"t{index}", evaluation(reached, 1.0, bpp, mse))
            searcher.on_trial_complete(f"t{index}", evaluation(reached, 1.0, bpp, mse))
        ((_, study),) = searcher.studies()
        assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
        assert [t.state for t in study.trials] == [COMPLETE, COMPLETE, PRUNED]
        assert [t.values for t in study.best_trials] in ([[0.2, 0.01], [0.4, 0.005]], [[0.4, 0.005], [0.2, 0.01]])
        assert type(study.sampler).__name__ == {"tpe": "TPESampler", "nsga2": "NSGAIISampler"}[sampler]


def test_searcher_state_survives_save_and_restore(tmp_path: Path):
    """The studies live in Optuna's journal file; Ray's checkpoint of the searcher lists only the Ray trials its
    own state knows, so a restored searcher reopens the same studies and rebuilds nothing."""
    journal = str(tmp_path / "optuna_journal.log")
    searcher = StratifiedOptunaSearch(ray_space(), metric=M.EVAL_RD_LOSS, mode="min", samples_per_cell=2, seed=0,
                                      storage=journal)
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", evaluation(6, 1.0))
    second = searcher.suggest("b")
    searcher.on_trial_result("b", evaluation(2, 3.0))
    searcher.save(str(tmp_path / "searcher.json"))
    saved = json.loads((tmp_path / "searcher.json").read_text())  # JSON, no pickle: loading it runs no code
    assert saved["trials"] == {"a": 0, "b": 1} and "config" not in json.dumps(saved)
    searcher.suggest("lost")  # asked after Ray's last save: Ray's restored state has no such trial
    restored = StratifiedOptunaSearch(ray_space(), metric=M.EVAL_RD_LOSS, mode="min", samples_per_cell=2, seed=0,
                                      storage=journal)
    restored.restore(str(tmp_path / "searcher.json"))
    assert restored.suggest("a") == first and restored.suggest("b") == second
    running = [t for _, s in restored.studies() for t in s.trials if t.user_attrs[RAY_TRIAL_ID] == "b"][0]
    assert running.params == {"schedule/lr": second["schedule"]["lr"]}
    assert dict(running.intermediate_values) == {2: 3.0}
    restored.on_trial_complete("b", evaluation(3, 2.0))  # stopped after the restore: still pruned
    assert [len(s.trials) for _, s in restored.studies()] == [2, 1]  # "lost" is in the low-λ study, FAILED
    assert [s.trials[0].state for _, s in restored.studies()] == [COMPLETE, PRUNED]
    assert restored.studies()[0][1].trials[1].state == FAIL
    restored.suggest("c"), restored.suggest("d")
    assert restored.suggest("e") == Searcher.FINISHED
    assert pickle.loads(pickle.dumps(restored)).cells == restored.cells


def test_optuna_searcher_refuses_a_param_space_with_domains():
    searcher = StratifiedOptunaSearch(ray_space(), metric=M.EVAL_RD_LOSS, mode="min")
    assert searcher.set_search_properties(None, None, {})
    with pytest.raises(LicSearchError, match=r"param_space=\{\}"):
        searcher.set_search_properties(None, None, ray_space())


# ----------------------------------------------------------------------------- builder
def spec_of(search: dict, **overrides):
    file = SimpleNamespace(search=SearchAlgorithmConfig(**search), scheduler=SchedulerConfig(), trial=tiny_trial())
    grid = 2 if "loss.lmbda" not in overrides else 1
    return SimpleNamespace(file=file, param_space=lambda: ray_space(**overrides),
                           trial_count=lambda: grid * file.search.num_samples, budget=lambda: 6,
                           stratify_by=lambda: stratify_keys(file.search, file.scheduler, file.trial))


def test_build_search_algorithm_from_the_search_section():
    random_search = spec_of({"num_samples": 3, "max_concurrent": 2, "seed": 4})
    built = build_search_algorithm(random_search)
    assert isinstance(built, BasicVariantGenerator) and built.max_concurrent == 2
    assert tuner_param_space(random_search)["loss"]["lmbda"] == {"grid_search": [0.0025, 0.0483]}
    assert tune_num_samples(random_search) == 3

    tpe = spec_of({"algorithm": "optuna", "num_samples": 3, "max_concurrent": 2, "seed": 4, "startup_trials": 2})
    limited = build_search_algorithm(tpe)
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 2
    inner = limited.searcher
    assert isinstance(inner, StratifiedOptunaSearch) and inner.metric == M.EVAL_RD_LOSS
    assert len(inner.studies()) == 2 and inner.samples_per_cell == 3
    assert tuner_param_space(tpe) == {} and tune_num_samples(tpe) == 6
    assert inner.studies()[0][1].sampler._n_startup_trials == 2
    assert [study.study_name for _, study in inner.studies()] == [
        "lic-search: loss.lmbda=0.0025", "lic-search: loss.lmbda=0.0483"]

    multi = spec_of({"algorithm": "optuna", "objectives": [M.EVAL_BPP, M.EVAL_PSNR], "sampler": "nsga2"})
    searcher = build_search_algorithm(multi)
    assert searcher.metric == [M.EVAL_BPP, M.EVAL_PSNR] and searcher.mode == ["min", "max"]
    assert [d.name for d in searcher.studies()[0][1].directions] == ["MINIMIZE", "MAXIMIZE"]


# ----------------------------------------------------------------------------- search section
@pytest.mark.parametrize("section, message", [
    ({"algorithm": "bayes"}, "'random' or 'optuna'"),
    ({"metric": "eval/rd-loss"}, "unknown metric 'eval/rd-loss'; allowed: eval/auxt_energy_share, eval/bpp"),
    ({"algorithm": "optuna", "objectives": [M.EVAL_BPP]}, "at least two objectives"),
    ({"algorithm": "optuna", "objectives": [M.EVAL_BPP, M.EVAL_BPP]}, "must be distinct"),
    ({"algorithm": "optuna", "objectives": [M.EVAL_BPP, "eval/distortion"]}, "unknown metric 'eval/distortion'"),
    ({"objectives": [M.EVAL_BPP, M.EVAL_MSE]}, "needs algorithm optuna"),
    ({"algorithm": "optuna", "objectives": [M.EVAL_BPP, M.EVAL_MSE], "modes": ["min"]}, "one per objective"),
    ({"algorithm": "optuna", "modes": ["min", "min"]}, "only with objectives"),
    ({"algorithm": "optuna", "sampler": "nsga2"}, "nsga2 is a multi-objective sampler"),
    ({"stratify_by": ["loss.lambda"]}, "'loss.lambda' is not a trial config key"),
    ({"stratify_by": ["loss"]}, "'loss' is not a trial config key"),
    ({"num_samples": 0}, "greater than or equal to 1"),
    ({"startup_trials": 0}, "greater than or equal to 1"),
])
def test_search_section_errors_name_the_rule(section: dict, message: str):
    with pytest.raises(ValidationError) as caught:
        SearchAlgorithmConfig(**section)
    assert message in str(caught.value)


def test_search_section_defaults_and_natural_modes():
    config = SearchAlgorithmConfig(algorithm="optuna", objectives=[M.EVAL_BPP, M.EVAL_MS_SSIM])
    assert config.objective_modes() == ["min", "max"] and config.multi_objective
    assert SearchAlgorithmConfig().stratify_by == ["loss.lmbda", "loss.distortion"]


@pytest.mark.parametrize("search, overrides, key_path, message", [
    ({"algorithm": "optuna"}, {"loss.lmbda": {"grid": [0.0025, 0.0483]}}, "search.algorithm",
     "optuna needs at least one sampled primitive"),
    ({"algorithm": "optuna"}, {"loss.lmbda": {"choice": [0.0025, 0.0483]}, "schedule.lr": {"uniform": [1e-4, 1e-3]}},
     "trial.loss.lmbda", "not comparable across different loss.lmbda"),
    ({"algorithm": "optuna"}, {"loss.distortion": {"choice": ["mse", "ms-ssim"]},
                               "schedule.lr": {"uniform": [1e-4, 1e-3]}},
     "trial.loss.distortion", "give loss.distortion as a fixed value or a `grid`"),
])
def test_optuna_setup_checks_name_the_key_path(search, overrides, key_path, message):
    with pytest.raises(SpaceError) as caught:
        check_search_setup(SearchAlgorithmConfig(**search), SchedulerConfig(type="fifo"), tiny_trial(**overrides),
                           budget=6, file="space.yaml")
    assert caught.value.key_path == key_path and message in str(caught.value)


def test_optuna_setup_accepts_lambda_grids_and_multi_objective_lambda_sampling():
    lr = {"schedule.lr": {"loguniform": [1e-5, 1e-3]}}
    check_search_setup(SearchAlgorithmConfig(algorithm="optuna"), SchedulerConfig(),
                       tiny_trial(**{"loss.lmbda": {"grid": [0.0025, 0.0483]}, **lr}), budget=6)
    check_search_setup(SearchAlgorithmConfig(algorithm="optuna", objectives=[M.EVAL_BPP, M.EVAL_MSE]),
                       SchedulerConfig(type="fifo"), tiny_trial(**{"loss.lmbda": {"loguniform": [1e-3, 1e-1]}, **lr}),
                       budget=6)


# ----------------------------------------------------------------------------- a real Ray Tune search
def lr_trainable(config: dict) -> None:
    """A stand-in for train_lic with a known loss ``1000·λ·(1 + |log10(lr) + 3| + 1/iteration)``
    (best lr 1e-3, scale set by λ). Only the searcher and the scheduler are under test."""
    import math as _math

    from ray import tune as _tune

    lmbda, lr = config["loss"]["lmbda"], config["schedule"]["lr"]
    for iteration in range(1, config["schedule"]["iterations"] + 1):
        loss = 1000 * lmbda * (1 + abs(_math.log10(lr) + 3) + 1 / iteration)
        _tune.report({M.ITERATIONS: iteration, M.EVAL_RD_LOSS: loss, M.EVAL_BPP: 1 / (1 + lr), M.EVAL_MSE: lr})


@pytest.mark.slow
def test_asha_with_optuna_prunes_stopped_trials_per_lambda(tmp_path: Path, ray_cluster):
    from ray import tune as ray_tune

    from search.tuning.schedulers import StratifiedASHA, build_scheduler

    spec = spec_of({"algorithm": "optuna", "num_samples": 3, "max_concurrent": 1, "seed": 3})
    spec.file.scheduler = SchedulerConfig(type="asha", grace_period=2, reduction_factor=2)
    scheduler, search_alg = build_scheduler(spec), build_search_algorithm(spec)
    assert isinstance(scheduler, StratifiedASHA)
    tuner = ray_tune.Tuner(
        lr_trainable, param_space=tuner_param_space(spec),
        tune_config=ray_tune.TuneConfig(scheduler=scheduler, search_alg=search_alg, num_samples=tune_num_samples(spec),
                                        reuse_actors=True),
        run_config=ray_tune.RunConfig(name="optuna-asha", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 6 and not any(r.error for r in results)
    searcher = search_alg.searcher
    reached = {r.metrics["trial_id"]: r.metrics[M.ITERATIONS] for r in results}
    states: dict[str, optuna.trial.TrialState] = {}
    by_id_config = {r.metrics["trial_id"]: r.config for r in results}
    for cell, study in searcher.studies():
        for ot_trial in study.trials:
            trial_id = ot_trial.user_attrs[RAY_TRIAL_ID]
            states[trial_id] = ot_trial.state
            config = by_id_config[trial_id]  # the trial ran the grid point of the study it was told to
            assert all(get_path(config, key) == value for key, value in cell.items()), (cell, config)
    assert set(states) == set(reached)
    for trial_id, iterations in reached.items():  # stopped -> PRUNED, ran its budget -> COMPLETE
        assert states[trial_id] == (COMPLETE if iterations == 6 else PRUNED), (trial_id, iterations)
    assert PRUNED in states.values() and COMPLETE in states.values()
    # strata: the first trial of each λ is compared with nothing and runs its budget, although the
    # high-λ one (second overall) has a 20x larger loss than the low-λ trial before it
    by_id = {r.metrics["trial_id"]: r for r in results}
    order = list(searcher._trial_config)  # suggestion order: low, high, low, high, ...
    first_low, first_high = by_id[order[0]], by_id[order[1]]
    assert (first_low.config["loss"]["lmbda"], first_high.config["loss"]["lmbda"]) == (0.0025, 0.0483)
    assert first_high.metrics[M.EVAL_RD_LOSS] > 5 * first_low.metrics[M.EVAL_RD_LOSS]
    assert first_low.metrics[M.ITERATIONS] == first_high.metrics[M.ITERATIONS] == 6


@pytest.mark.slow
def test_a_restored_optuna_search_continues_its_studies(tmp_path: Path, ray_cluster):
    """Interrupt after two trials, Tuner.restore: the studies keep the trials told before the
    interruption, the search proposes only the remaining ones, and every trial is told once."""
    import os
    import signal

    from ray import tune as ray_tune

    class InterruptAfterTwo(ray_tune.Callback):
        def __init__(self):
            self.finished = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            if self.finished == 2:
                os.kill(os.getpid(), signal.SIGUSR1)  # what Ctrl+C does: Ray saves the state and stops

    spec = spec_of({"algorithm": "optuna", "num_samples": 3, "max_concurrent": 1, "seed": 0},
                   **{"loss.lmbda": 0.013})
    search_alg = build_search_algorithm(spec, folder=str(tmp_path / "optuna-resume"))
    tuner = ray_tune.Tuner(
        lr_trainable, param_space=tuner_param_space(spec),
        tune_config=ray_tune.TuneConfig(search_alg=search_alg, num_samples=tune_num_samples(spec), reuse_actors=True),
        run_config=ray_tune.RunConfig(name="optuna-resume", storage_path=str(tmp_path), verbose=0,
                                      callbacks=[InterruptAfterTwo()]),
    )
    first = tuner.fit()
    assert sum(1 for r in first if r.metrics.get(M.ITERATIONS) == 6) == 2
    restored_tuner = ray_tune.Tuner.restore(str(tmp_path / "optuna-resume"), trainable=lr_trainable,
                                            param_space=tuner_param_space(spec), resume_unfinished=True)
    results = restored_tuner.fit()
    assert len(results) == 3 and all(r.metrics[M.ITERATIONS] == 6 for r in results)
    # The one study, read from Optuna's journal in the experiment folder as optuna-dashboard reads it
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "optuna-resume" / "optuna_journal.log")))
    (summary,) = optuna.get_all_study_summaries(journal)
    study = optuna.load_study(study_name=summary.study_name, storage=journal)
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE, COMPLETE]
    told = sorted(t.value for t in study.trials)
    assert told == pytest.approx(sorted(r.metrics[M.EVAL_RD_LOSS] for r in results))
    assert {t.user_attrs["ray_trial_id"] for t in study.trials} == {r.metrics["trial_id"] for r in results}
