"""Rate families, their BD-rate ranking and the training-speed metric, on constructed data."""

from __future__ import annotations

import math

import pytest

from search.analysis.curves import load_curve, shipped_anchor
from search.analysis.families import (
    TrialPoint,
    auxt_pairs,
    distinguishing_params,
    family_speed,
    group_families,
    iterations_to_reach,
    rank_families,
    training_speed,
)
from search.space.strata import family_key, family_params
from trainables.config import flatten


def _config(lmbda: float = 0.013, seed: int = 0, auxt: bool = False, lambda_orth: float = 0.1,
            lr: float = 1e-4) -> dict:
    return {
        "model": {"backbone": "mbt2018-mean", "N": 16, "M": 16,
                  "auxt": {"enabled": auxt, "lambda_orth": lambda_orth, "scaling_init": (1.0, 0.5, 0.5, 0.0)}},
        "data": {"train": "/data/train", "eval": "/data/eval", "crop_size": 64},
        "loss": {"distortion": "mse", "lmbda": lmbda},
        "schedule": {"iterations": 400, "lr": lr, "seed": seed},
    }


def _mlflow_params(config: dict) -> dict[str, str]:
    """What MLflow hands back: flattened params as strings."""
    return {k: str(v) for k, v in flatten(config).items()}


def test_family_key_ignores_only_lambda():
    base = family_key(_config(lmbda=0.0025))
    assert family_key(_config(lmbda=0.0483)) == base
    assert family_key(_config(lr=2e-4)) != base
    assert family_key(_config(seed=1)) != base  # replicates are separate families (documented choice)
    assert family_key(_config(auxt=True)) != base


def test_family_key_from_config_equals_key_from_mlflow_params():
    for config in (_config(), _config(auxt=True, lmbda=0.0067)):
        assert family_key(config) == family_key(flatten(config)) == family_key(_mlflow_params(config))


def test_disabled_auxt_knobs_do_not_split_families():
    assert family_key(_config(auxt=False, lambda_orth=0.1)) == family_key(_config(auxt=False, lambda_orth=0.0))
    assert family_key(_config(auxt=True, lambda_orth=0.1)) != family_key(_config(auxt=True, lambda_orth=0.0))
    no_auxt_section = _config()
    del no_auxt_section["model"]["auxt"]
    assert family_key(no_auxt_section) == family_key(_config(auxt=False))
    assert "loss.lmbda" not in family_params(_config())


def _family_trials(prefix: str, factor: float, **config) -> list[TrialPoint]:
    """Trials lying on the VTM curve with every rate multiplied by ``factor`` (BD-rate = factor - 1)."""
    vtm = load_curve(shipped_anchor())
    return [TrialPoint(f"{prefix}{i}", _mlflow_params(_config(lmbda=0.001 * (i + 1), **config)), bpp=b * factor,
                       psnr=p, ms_ssim=s)
            for i, (b, p, s) in enumerate(zip(vtm.bpp, vtm.psnr, vtm.ms_ssim))]


def test_group_and_rank_families_by_bd_rate():
    vtm = load_curve(shipped_anchor())
    slow = _family_trials("a", 1.10)  # +10% against VTM
    fast = _family_trials("b", 0.85, auxt=True)  # -15%
    short = _family_trials("c", 0.5, lr=3e-4)[:3]  # too few points for a BD-rate
    unfinished = TrialPoint("d", _mlflow_params(_config(lmbda=0.5)), bpp=None, psnr=None)
    trials = [slow[0], fast[0], *slow[1:], *fast[1:], *short, unfinished]
    families = group_families(trials)
    assert [len(f.trials) for f in families] == [9, 8, 3]  # the unfinished trial joins the first family
    assert families[0].lambdas[-1] == 0.5 and len(families[0].curve()) == 8  # but adds no point
    assert families[1].auxt and not families[0].auxt

    ranked = rank_families(families, vtm)
    assert [r.family.key for r in ranked] == [families[1].key, families[0].key, families[2].key]
    assert [r.rank for r in ranked] == [1, 2, None]
    assert ranked[0].bd_rate == pytest.approx(-15.0, abs=1e-6)
    assert ranked[1].bd_rate == pytest.approx(10.0, abs=1e-6)
    assert ranked[2].result is None and "has 3 rate points; BD-rate needs at least 4" in ranked[2].reason
    ms_ssim = rank_families(families[:2], vtm, metric="ms-ssim")
    assert [r.bd_rate for r in ms_ssim] == pytest.approx([-15.0, 10.0], abs=1e-6)

    curve = families[1].curve()
    assert curve.bpp == sorted(curve.bpp) and curve.extra["trial_id"][0] == "b0"
    differ = distinguishing_params(families)
    # shown as names and tables show them: the AuxT setting, "n/a" for the knobs of AuxT off (not "default")
    assert differ[families[0].key] == {"model.auxt.enabled": "off", "model.auxt.lambda_orth": "n/a",
                                       "model.auxt.scaling_init": "n/a", "schedule.lr": "0.0001"}
    assert differ[families[1].key] == {"model.auxt.enabled": "haar", "model.auxt.lambda_orth": "0.1",
                                       "model.auxt.scaling_init": "(1.0, 0.5, 0.5, 0.0)", "schedule.lr": "0.0001"}


def test_iterations_to_reach_interpolates_linearly():
    history = {100: 0.9, 200: 0.6, 300: 0.5, 400: 0.45}
    assert iterations_to_reach(history, 0.75) == pytest.approx(150.0)
    assert iterations_to_reach(history, 0.6) == pytest.approx(200.0)
    assert iterations_to_reach(history, 0.475) == pytest.approx(350.0)
    assert iterations_to_reach(history, 1.5) == 100.0  # already there at the first evaluation
    assert iterations_to_reach(history, 0.4) is None
    # the first crossing counts, also on a noisy curve; NaN evaluations are skipped
    assert iterations_to_reach([(0, 2.0), (10, 1.0), (20, float("nan")), (30, 1.5), (40, 0.9)], 1.2) == \
        pytest.approx(8.0)


def test_training_speed_both_directions_and_ratio():
    reference = {100: 1.0, 200: 0.8, 300: 0.7, 400: 0.6}
    test = [(100, 0.9), (200, 0.6), (300, 0.5), (400, 0.45)]
    result = training_speed(test, reference)
    assert result.reference_final_loss == 0.6 and result.test_final_loss == 0.45
    assert result.test_reaches_reference_final == pytest.approx(200.0)
    assert result.reference_reaches_test_final is None
    assert result.fraction == pytest.approx(0.5) and result.speedup == pytest.approx(2.0)
    reverse = training_speed(reference, test)
    assert reverse.test_reaches_reference_final is None and reverse.fraction is None and reverse.speedup is None
    assert reverse.reference_reaches_test_final == pytest.approx(200.0)


def test_family_speed_matches_lambdas_and_takes_geometric_mean():
    def trial(name, lmbda, auxt, history):
        return TrialPoint(name, _mlflow_params(_config(lmbda=lmbda, auxt=auxt)), bpp=0.5, psnr=30.0,
                          rd_loss_history=history)

    families = group_families([
        trial("off-1", 0.0067, False, [(100, 1.0), (200, 0.8), (400, 0.6)]),
        trial("off-2", 0.013, False, [(100, 2.0), (200, 1.6), (400, 1.2)]),
        trial("off-3", 0.025, False, [(100, 3.0), (400, 2.0)]),  # no AuxT counterpart at this λ
        trial("on-1", 0.0067, True, [(100, 0.8), (200, 0.6), (400, 0.5)]),  # 0.6 at 200 of 400: 0.5
        trial("on-2", 0.013, True, [(100, 1.2), (200, 1.1), (400, 1.0)]),  # 1.2 at 100 of 400: 0.25
    ])
    off, on = families
    assert auxt_pairs(families) == [(on, off)]
    speed = family_speed(on, off)
    assert sorted(speed.per_lambda) == [0.0067, 0.013]
    assert speed.per_lambda[0.0067].fraction == pytest.approx(0.5)
    assert speed.per_lambda[0.013].fraction == pytest.approx(0.25)
    assert speed.fraction == pytest.approx(math.sqrt(0.5 * 0.25))
    assert speed.speedup == pytest.approx(1 / math.sqrt(0.125))
    # no single number when one λ never reaches the other's final loss
    assert family_speed(off, on).fraction is None


def test_auxt_pairs_need_identical_non_auxt_params():
    families = group_families([
        TrialPoint("a", _mlflow_params(_config(auxt=True))),
        TrialPoint("b", _mlflow_params(_config(auxt=False, lr=3e-4))),
    ])
    assert auxt_pairs(families) == []
