"""Intervals on simulated R-D data where the truth is known (search/analysis/intervals.py).

Each simulated search draws 24 images with their own difficulty (rate factor, PSNR offset) and
measures every variant on them with independent per-image noise; a variant that saves 3 % rate at
equal quality has every image's bpp scaled by 0.97. The paired bootstrap must cover the truth."""

from __future__ import annotations

import numpy as np

from search.analysis.intervals import Variant, bd_rate_intervals, fold_seeds
from search.bootstrap import Bootstrap, Interval, Measured, leader_gaps, letter_display
from trainables.metrics import PerImage

LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013)
IMAGES = 24


def _images(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return np.exp(rng.normal(0, 0.3, IMAGES)), rng.normal(0, 1.5, IMAGES)


def _trials(rng, difficulty, rate_factor: float = 1.0, noise: float = 0.03, prefix: str = "t") -> list[Measured]:
    rate_effect, quality_effect = difficulty
    trials = []
    for j, lmbda in enumerate(LAMBDAS):
        table = PerImage()
        for i in range(IMAGES):
            bpp = 0.15 * 2**j * rate_effect[i] * rate_factor * np.exp(rng.normal(0, noise))
            psnr = 28 + 2.2 * j + quality_effect[i] + rng.normal(0, 0.1)
            table.add(f"kodim{i:02d}.png", bpp=bpp, psnr=psnr, mse=10 ** (-psnr / 10), rd_loss=bpp)
        trials.append(Measured(f"{prefix}{j}", lmbda, table))
    return trials


def test_bd_rate_intervals_cover_the_truth_in_about_95_percent_of_simulated_searches():
    rng = np.random.default_rng(7)
    # 100 resamples per search (the product uses 1000; 50 would undercover, 0.865): the BD-rate of one resample
    # is one bjontegaard call, ~1 ms (scipy's pchip set-up), so 25,000 of them take ~30 s on an idle core
    bootstrap = Bootstrap(resamples=100)
    covers_zero, covers_three = [], []
    for simulation in range(200):
        difficulty = _images(rng)
        baseline = Variant("baseline", "A", {"0": _trials(rng, difficulty)})
        same = Variant("same", "S", {"0": _trials(rng, difficulty)})
        variants = [same]
        if simulation < 50:  # the -3 % variant: fewer simulations
            variants.append(Variant("minus 3 %", "M", {"0": _trials(rng, difficulty, rate_factor=0.97)}))
        result = bd_rate_intervals(variants, baseline, bootstrap=bootstrap)
        covers_zero.append(result.intervals["same"].contains(0.0))
        if simulation < 50:
            covers_three.append(result.intervals["minus 3 %"].contains(-3.0))
            assert result.intervals["minus 3 %"].estimate < 0
    assert 0.90 <= np.mean(covers_zero) <= 0.99, np.mean(covers_zero)
    assert np.mean(covers_three) >= 0.88, np.mean(covers_three)


def test_a_set_difference_is_resolved_and_the_output_says_how_finely():
    rng = np.random.default_rng(3)
    difficulty = _images(rng)
    baseline = Variant("baseline", "A", {"0": _trials(rng, difficulty)})
    better = Variant("full WLS", "W", {"0": _trials(rng, difficulty, rate_factor=0.90)})
    same = Variant("no WLS", "N", {"0": _trials(rng, difficulty)})
    result = bd_rate_intervals([better, same], baseline, bootstrap=Bootstrap(resamples=150))
    full = result.intervals["full WLS"]
    assert full.upper < 0 and full.contains(-10.0), full
    assert result.tied_with("no WLS") == ["baseline"]
    assert result.letters["full WLS"] == "a" and result.letters["no WLS"] == result.letters["baseline"] == "b"
    assert 0 < result.resolution < 3
    assert result.resolution_sentence().startswith("with 24 images and 1 seed per variant, differences under ")
    again = bd_rate_intervals([better, same], baseline, bootstrap=Bootstrap(resamples=150))
    assert again.intervals["full WLS"] == full  # fixed bootstrap seed: reproducible


def test_seed_repeats_fold_into_one_variant_and_widen_its_interval():
    rng = np.random.default_rng(5)
    difficulty = _images(rng)
    params = {"model.backbone": "tiny", "loss.lmbda": 0.0018}
    members = []
    for seed, shift in (("0", 1.0), ("1", 0.94), ("2", 1.06)):  # seeds disagree: training noise
        for trial in _trials(rng, difficulty, rate_factor=shift, prefix=f"s{seed}-"):
            members.append(("variant", {**params, "schedule.seed": seed, "loss.lmbda": trial.lmbda}, None, trial))
    folded = fold_seeds(members)
    assert len(folded) == 1 and folded[0].seed_count == 3
    baseline = Variant("baseline", "A", {"0": _trials(rng, difficulty)})
    one_seed = Variant("variant", "V1", {"0": folded[0].seeds["0"]})
    wide = bd_rate_intervals(folded, baseline, bootstrap=Bootstrap(resamples=200)).intervals["variant"]
    narrow = bd_rate_intervals([one_seed], baseline, bootstrap=Bootstrap(resamples=200)).intervals["variant"]
    assert wide.half_width > 1.5 * narrow.half_width
    result = bd_rate_intervals(folded, baseline, bootstrap=Bootstrap(resamples=50))
    assert result.seeds == {"baseline": 1, "variant": 3}
    assert "1-3 seeds per variant" in result.resolution_sentence()


def test_leader_gaps_mark_ties_and_clear_gaps():
    rng = np.random.default_rng(11)
    difficulty = _images(rng)
    leader, close, far = (_trials(rng, difficulty, rate_factor=f, prefix=name)[0]
                          for f, name in ((1.0, "leader"), (1.002, "close"), (1.2, "far")))
    gaps = {g.trial_id: g for g in leader_gaps(leader, [close, far], "eval/rd_loss", "min")}
    assert gaps[close.trial_id].tied and gaps[close.trial_id].interval.contains(0.0)
    assert not gaps[far.trial_id].tied and gaps[far.trial_id].relative.lower > 10
    assert leader_gaps(leader, [close], "eval/decode_steps", "min") == []  # no per-image values for it


def test_letter_display_groups_runs_of_indistinguishable_variants():
    estimates = {"A": -3.0, "B": -2.5, "C": -1.0, "D": 0.0}
    ties = {frozenset("AB"), frozenset("BC"), frozenset("CD")}
    letters = letter_display(estimates, lambda a, b: frozenset((a, b)) in ties)
    assert letters == {"A": "a", "B": "ab", "C": "bc", "D": "c"}


def test_interval_text():
    assert Interval(-1.2, -2.0, -0.4).text() == "-1.2 % [-2.0, -0.4]"
