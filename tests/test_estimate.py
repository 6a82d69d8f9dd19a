"""`lic-search estimate`: the cost arithmetic (numbers worked out by hand), the trial plan of a
space, the presets' stated GPU budgets, and the command on the quickstart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.analysis.estimate import Stage, StepConfig, TrialPlan, asha_rungs, estimate, plan_trials
from search.analysis.step_timing import timing_order
from search.cli import main
from search.space import load_space

REPO = Path(__file__).resolve().parents[1]
X = StepConfig("mbt2018-mean", 8, 16, "off", 2, 64, "none", False, False)
Y = StepConfig("mbt2018-mean", 8, 16, "on", 2, 64, "none", False, False)
SECONDS = {X: 0.5, Y: 1.0}


def _trial(step: StepConfig, iterations: int, eval_every: int, stratum: str) -> TrialPlan:
    return TrialPlan(step, iterations, eval_every, (stratum,), {})


def _trials() -> list[TrialPlan]:
    """Stratum A: two cheap (X, reports every 150) and two dear (Y) trials of 1000 iterations;
    stratum B: one X trial of 300 iterations."""
    return [_trial(X, 1000, 150, "A"), _trial(X, 1000, 150, "A"), _trial(Y, 1000, 100, "A"),
            _trial(Y, 1000, 100, "A"), _trial(X, 300, 100, "B")]


def _asha(**overrides) -> SimpleNamespace:
    values = dict(type="asha", grace_period=100, reduction_factor=2.0, brackets=1, max_t=None)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_rungs_match_the_scheduler() -> None:
    """grace 100, η 2, max_t 1000: rungs 100, 200, 400, 800, as StratifiedASHA builds them."""
    from search.tuning.schedulers import _Bracket

    assert asha_rungs(100, 1000, 2.0) == [100, 200, 400, 800]
    for grace, max_t, eta, s in [(100, 600, 2.0, 0), (5000, 600000, 3.0, 0), (7, 1000, 4.0, 1)]:
        assert asha_rungs(grace, max_t, eta, s) == sorted(m for m, _ in _Bracket(grace, max_t, eta, s).rungs)


def test_grid_and_asha_arithmetic_by_hand() -> None:
    result = estimate(_trials(), SECONDS, _asha(), gpus=2, gpus_per_trial=1.0)
    assert result.trials == 5
    # Grid: X 2*1000*0.5 + Y 2*1000*1.0 + B 300*0.5 = 3150 s.
    assert result.grid_iterations == 4300
    assert result.grid_hours == pytest.approx(3150 / 3600)
    # ASHA, stratum A: rung 100 keeps the two Y (costliest); the X trials stop at their first
    # report after 100, i.e. 150. Rung 200 keeps one Y, the other stops at 200; the last goes
    # to 1000. Stratum B runs its whole 300 (no rung beyond 200 before its budget ends).
    # Iterations 150+150+200+1000+300 = 1800; seconds 75+75+200+1000+150 = 1500.
    assert result.asha_iterations == 1800
    assert result.asha_hours == pytest.approx(1500 / 3600)
    assert [(r.milestone, r.reach, r.passed) for r in result.rungs] == [
        (100, 5, 3), (200, 3, 2), (400, 1, 1), (800, 1, 1)]
    # Wall time on 2 GPUs, longest first: grid 1000|1000, +500|+500, +150 -> 1650 s;
    # ASHA 1000 | 200+150+75+75 = 500 -> 1000 s.
    assert result.concurrent == 2
    assert result.grid_wall_hours == pytest.approx(1650 / 3600)
    assert result.asha_wall_hours == pytest.approx(1000 / 3600)


def test_fractional_multi_gpu_and_cpu_trials() -> None:
    # 4 trials share 1 GPU (0.25 each), each 4x slower: durations 4000, 4000, 2000, 2000, 600 s
    # on 4 slots -> 4000 s. Packing is assumed to give no speed-up: device-hours = trial-hours.
    packed = estimate(_trials(), SECONDS, _asha(), gpus=1, gpus_per_trial=0.25)
    assert packed.concurrent == 4
    assert packed.grid_hours == pytest.approx(3150 / 3600)
    assert packed.grid_wall_hours == pytest.approx(4000 / 3600)
    # A 2-GPU trial on 4 GPUs: 2 at once, twice the device-hours.
    wide = estimate(_trials(), SECONDS, _asha(), gpus=4, gpus_per_trial=2.0)
    assert wide.concurrent == 2
    assert wide.grid_hours == pytest.approx(2 * 3150 / 3600)
    # CPU trials: --gpus is ignored, max_concurrent sets the slots: 1000 | 1000 | 500, +500 -> 1000, +150 -> 1150 s.
    cpu = estimate(_trials(), SECONDS, _asha(), gpus=8, gpus_per_trial=0.0, max_concurrent=3)
    assert cpu.concurrent == 3 and cpu.devices == 0
    assert cpu.grid_wall_hours == pytest.approx(1150 / 3600)


def test_fifo_has_no_early_stopping() -> None:
    result = estimate(_trials(), SECONDS, _asha(type="fifo"), gpus=1)
    assert result.asha_hours is None and result.asha_iterations is None and result.rungs == []
    assert result.grid_hours == pytest.approx(3150 / 3600)


def test_plan_of_a_space_with_known_counts(tmp_path: Path) -> None:
    """AuxT on/off x 2 λ x 3 samples = 12 trials: 2 step configurations, 2 strata of 6."""
    data = (REPO / "samples" / "kodak-crops" / "train").as_posix()
    space = tmp_path / "space.yaml"
    space.write_text(f"""
name: known
trial:
  model: {{backbone: mbt2018-mean, N: 8, M: 16, auxt: {{enabled: {{grid: [true, false]}}}}}}
  data: {{train: {data}, eval: {data}, crop_size: 64, batch_size: 2}}
  loss: {{lmbda: {{grid: [0.0067, 0.013]}}}}
  schedule: {{iterations: 400, eval_every: 50, lr: {{loguniform: [0.0001, 0.001]}}}}
search: {{num_samples: 3, seed: 1}}
scheduler: {{type: asha, grace_period: 50, reduction_factor: 2}}
""")
    spec = load_space(space)
    trials = plan_trials(spec, seed=1)
    assert len(trials) == spec.trial_count() == 12
    assert sorted({t.step.auxt for t in trials}) == ["off", "on"]
    assert sum(t.step.auxt == "on" for t in trials) == 6
    assert len({t.stratum for t in trials}) == 2
    assert {t.iterations for t in trials} == {400}
    assert len({t.config["schedule"]["lr"] for t in trials}) == 12  # drawn per trial
    # Rungs 50, 100, 200 (400 = max_t is the end): per stratum 6 -> 3 -> 2 -> 1.
    result = estimate(trials, {t.step: 0.01 for t in trials}, spec.file.scheduler, gpus=1)
    assert [(r.reach, r.passed) for r in result.rungs] == [(12, 6), (6, 4), (4, 2)]
    assert result.asha_iterations == 2 * (3 * 50 + 1 * 100 + 1 * 200 + 1 * 400)


def _budget_space(tmp_path: Path, name: str, iterations: str) -> Path:
    data = REPO / "samples" / "kodak-crops" / "train"
    space = tmp_path / f"{name}.yaml"
    space.write_text(f"""
name: {name}
trial:
  model: {{backbone: mbt2018-mean, N: 8, M: 16}}
  data: {{train: {data}, eval: {data}, crop_size: 64, batch_size: 2}}
  loss: {{lmbda: {{grid: [0.0067, 0.013]}}}}
  schedule: {{iterations: {iterations}, eval_every: 50, lr: {{loguniform: [0.0001, 0.001]}}}}
search: {{num_samples: 4, seed: 1}}
scheduler: {{type: asha, grace_period: 50, reduction_factor: 2, max_t: 800}}
""")
    return space


def test_asha_estimate_of_varying_budgets_is_the_sum_of_its_per_budget_sub_spaces(tmp_path: Path) -> None:
    """ASHA adds the varying ``schedule.iterations`` to the strata (the scheduler does): trials of different
    budgets never compete, so the whole space costs what its per-budget sub-spaces cost apart."""
    whole = load_space(_budget_space(tmp_path, "whole", "{grid: [400, 800]}"))
    assert "schedule.iterations" in whole.stratify_by()
    parts = [load_space(_budget_space(tmp_path, f"only{n}", str(n))) for n in (400, 800)]

    def asha(spec) -> int:
        trials = plan_trials(spec, seed=1)
        return estimate(trials, {t.step: 0.01 for t in trials}, spec.file.scheduler, gpus=1).asha_iterations

    assert len({t.stratum for t in plan_trials(whole)}) == 4  # 2 λ x 2 budgets
    assert asha(whole) == sum(asha(part) for part in parts)
    # Strata by search.stratify_by alone (λ only) would let 400- and 800-iteration trials compete: another number.
    merged = [TrialPlan(t.step, t.iterations, t.eval_every, t.stratum[:1], t.config) for t in plan_trials(whole)]
    assert estimate(merged, {t.step: 0.01 for t in merged}, whole.file.scheduler, gpus=1).asha_iterations != asha(whole)


# A later crop_schedule stage: crop 128, batch 1, four times X's step time.
Z = StepConfig("mbt2018-mean", 8, 16, "off", 1, 128, "none", False, False)


def _staged(at: float, iterations: int = 1000) -> TrialPlan:
    """X until fraction ``at`` of the budget, then Z."""
    return TrialPlan(X, iterations, 100, ("A",), {}, (Stage(0.0, X, {}), Stage(at, Z, {})))


def test_crop_schedule_stages_are_weighted_by_their_length_in_grid_and_asha() -> None:
    seconds = {X: 0.5, Z: 2.0, Y: 0.8}
    # Grid: 750 iterations of X + 250 of Z = 375 + 500 = 875 s (timed at crop_size alone: 500 s).
    staged = _staged(0.75)
    assert staged.seconds(1000, seconds) == pytest.approx(875.0)
    assert estimate([staged], seconds, _asha(type="fifo")).grid_hours == pytest.approx(875 / 3600)
    # ASHA (grace 100, η 2), one stratum: the staged trial and a Y trial (0.8 s/it). At rung 100 one of
    # two goes on, the costlier rest kept: staged 875 - 50 = 825 s > Y 900 * 0.8 = 720 s, so Y stops at
    # 100 (80 s) and the staged trial runs to the end. (Priced at its first stage alone, 450 s, Y would win.)
    result = estimate([staged, _trial(Y, 1000, 100, "A")], seconds, _asha(), gpus=1)
    assert result.asha_iterations == 1100
    assert result.asha_hours == pytest.approx((875 + 80) / 3600)
    assert result.grid_hours == pytest.approx((875 + 800) / 3600)
    assert [(r.milestone, r.reach, r.passed) for r in result.rungs] == [
        (100, 2, 1), (200, 1, 1), (400, 1, 1), (800, 1, 1)]


def test_a_trial_stopped_at_a_rung_pays_only_for_the_stages_before_it() -> None:
    seconds = {X: 0.5, Z: 2.0, Y: 3.0}
    # Z from iteration 50: whole budget 50 * 0.5 + 950 * 2.0 = 1925 s; its first 100: 25 + 50 * 2.0 = 125 s.
    staged = _staged(0.05)
    assert staged.seconds(100, seconds) == pytest.approx(125.0)
    # Rung 100 keeps 2 of 3: the Y trials (900 * 3.0 = 2700 s left) over the staged one (1925 - 125 = 1800 s),
    # which stops at 100 having paid 125 s. Rung 200 keeps one Y (to 1000: 3000 s), the other stops (600 s).
    trials = [staged, _trial(Y, 1000, 100, "A"), _trial(Y, 1000, 100, "A")]
    result = estimate(trials, seconds, _asha(), gpus=1)
    assert result.asha_iterations == 100 + 1000 + 200
    assert result.asha_hours == pytest.approx((125 + 3000 + 600) / 3600)
    assert result.grid_hours == pytest.approx((1925 + 2 * 3000) / 3600)
    assert [(r.reach, r.passed) for r in result.rungs] == [(3, 2), (2, 1), (1, 1), (1, 1)]


def test_plan_of_a_crop_schedule_has_a_step_config_and_an_unstaged_config_per_stage(tmp_path: Path) -> None:
    from trainables.config import TrialConfig

    data = (REPO / "samples" / "kodak-crops" / "train").as_posix()
    space = tmp_path / "staged.yaml"
    space.write_text(f"""
name: staged
trial:
  model: {{backbone: mbt2018-mean, N: 8, M: 16}}
  data: {{train: {data}, eval: {data}, batch_size: 4, crop_schedule: [[0.0, 64], [0.8, 128, 2]]}}
  loss: {{lmbda: 0.013}}
  schedule: {{iterations: 500, eval_every: 50}}
""")
    spec = load_space(space)
    [trial] = plan_trials(spec)
    assert [(s.at, s.step.crop_size, s.step.batch_size) for s in trial.stages] == [(0.0, 64, 4), (0.8, 128, 2)]
    assert trial.step == trial.stages[0].step
    for stage in trial.stages:  # what `estimate` times: the stage's crop and batch size throughout
        config = TrialConfig.model_validate(stage.config)
        assert config.data.crop_schedule is None
        assert (config.data.crop_size, config.data.batch_size) == (stage.step.crop_size, stage.step.batch_size)
    # 400 iterations at 64/4 (0.1 s), 100 at 128/2 (0.3 s): 40 + 30 = 70 s
    seconds = {trial.stages[0].step: 0.1, trial.stages[1].step: 0.3}
    assert estimate([trial], seconds, spec.file.scheduler).grid_hours == pytest.approx(70 / 3600)


# Paper Table 1: GPU-hours per 0.6M iterations on an RTX 4090-class GPU, without / with AuxT.
TABLE1_HOURS = {"mbt2018-mean": (15, 18), "elic": (43, 46), "stf": (35, 36), "tcm-small": (72, 75),
                "tcm-large": (100, 105),
                # not in Table 1 (reconstructions, no published times): the presets assume the backbone
                # each one shares its entropy model (llic-style: ELIC) or its transforms (msp-style: mbt2018-mean) with
                "llic-style": (43, 46), "msp-style": (15, 18)}
PRESETS = sorted((REPO / "spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in PRESETS if p.name != "quickstart.yaml"], ids=lambda p: p.stem)
def test_preset_description_budget_matches_the_arithmetic(path: Path) -> None:
    """Each full preset's "~N GPU-hours" total = its trials x budgets at the paper's per-iteration
    GPU time (Table 1; no GPU here, so the presets' own assumption, not a measurement)."""
    spec = load_space(path, check_data=False)
    trials = plan_trials(spec)
    # every crop_schedule stage at the same time per iteration: the presets keep the pixels per batch
    seconds = {s.step: TABLE1_HOURS[s.step.backbone][s.step.auxt != "off"] * 3600 / 600_000
               for t in trials for s in t.phases()}
    result = estimate(trials, seconds, spec.file.scheduler, gpus=1, gpus_per_trial=spec.file.resources.gpus_per_trial)
    stated = re.findall(r"~([\d,]+) GPU-hours\.?\s*$", spec.file.description)
    assert stated, f"{path.name}: description states no total '~N GPU-hours': {spec.file.description!r}"
    total = float(stated[-1].replace(",", ""))
    assert total == pytest.approx(result.grid_hours, rel=0.03), (path.name, result.grid_hours)
    counted = re.findall(r"(\d+) trials", spec.file.description)
    assert counted and int(counted[-1]) == spec.trial_count() == result.trials


def test_estimate_command_on_the_quickstart(capsys) -> None:
    assert main(["estimate", str(REPO / "spaces" / "quickstart.yaml"), "--steps", "4", "--warmup", "2"]) == 0
    out = capsys.readouterr().out
    assert "no GPU used: these are CPU timings" in out or "timed on: NVIDIA" in out
    grid = re.search(r"^grid \(every trial its full budget\): 5,400 iterations, ([\d.]+) (CPU|GPU)-hours", out, re.M)
    asha = re.search(r"^ASHA .*: 2,400 iterations, ([\d.]+) (CPU|GPU)-hours", out, re.M)
    assert grid and asha, out
    assert 0 < float(asha.group(1)) < float(grid.group(1))
    assert re.search(r"rung 100: 9 trial\(s\) reach it, 5 go on", out)
    assert re.search(r"^wall time on .*: grid [\d.]+ h.*, ASHA [\d.]+ h", out, re.M)
    assert re.search(r"search launch and end: [\d.]+ s around the trials .*, [\d.]+ s for a fresh worker to import", out)
    assert re.search(r"s/iteration \(rounds [\d.e+-]+/[\d.e+-]+\), [\d.]+ s/evaluation with its checkpoint, "
                     r"[\d.]+ s start-up", out)


def test_estimate_command_times_each_crop_schedule_stage(tmp_path: Path, capsys) -> None:
    """One trial, 64x64 batch 2 for 80% of 100 iterations, then 128x128 batch 1: two timed configurations,
    and the grid hours are the stages' iterations at their own measured times."""
    data = (REPO / "samples" / "kodak-crops" / "train").as_posix()
    space = tmp_path / "staged.yaml"
    space.write_text(f"""
name: staged
trial:
  model: {{backbone: mbt2018-mean, N: 8, M: 8}}
  data: {{train: {data}, eval: {data}, batch_size: 2, crop_schedule: [[0.0, 64], [0.8, 128, 1]]}}
  loss: {{lmbda: 0.013}}
  schedule: {{iterations: 100, eval_every: 50}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
""")
    assert main(["estimate", str(space), "--steps", "2", "--warmup", "1", "--device", "cpu", "--launch", "0"]) == 0
    shown = capsys.readouterr()
    out = shown.out
    # two configurations, two mirrored rounds: the last timing is the last configuration's second round
    assert re.match(r"estimate: timing step configurations: 4/4 \[.*\] · 4/4: mbt2018-mean N=8 M=8 \(\d+ params\), "
                    r"AuxT off, batch \d, crop \d+, amp none \(round 2/2\)", shown.err), shown.err
    assert "estimate:" not in out  # progress goes to stderr only
    number = r"([\d.e+-]+)"
    times = {int(crop): (int(batch), float(s), share, float(evaluation), float(startup), (float(r1), float(r2)))
             for batch, crop, s, r1, r2, evaluation, startup, share in re.findall(
                 rf"batch (\d+), crop (\d+), amp \w+: {number} s/iteration \(rounds {number}/{number}\), "
                 rf"{number} s/evaluation with its checkpoint, "
                 rf"{number} s start-up \(1 trial\(s\), crop_schedule stage: (\d+%)", out)}
    assert times.keys() == {64, 128}, out
    assert (times[64][0], times[64][2], times[128][0], times[128][2]) == (2, "80%", 1, "20%")
    assert all(t[3] > 0 and t[4] > 0 for t in times.values())  # evaluations and start-up are measured
    assert all(t[1] == pytest.approx(sum(t[5]) / 2, rel=2e-3) for t in times.values())  # the rounds' mean
    grid = re.search(r"^grid \(every trial its full budget\): 100 iterations, ([\d.e+-]+) CPU-hours", out, re.M)
    assert grid, out
    # the stages' steps, the first stage's start-up, the evaluation at 50 (crop 64) and at 100 (crop 128)
    expected = (80 * times[64][1] + 20 * times[128][1] + times[64][4] + times[64][3] + times[128][3]) / 3600
    assert float(grid.group(1)) == pytest.approx(expected, rel=1e-2)  # printed to 3-4 significant digits


def test_configurations_are_timed_in_mirrored_rounds() -> None:
    """C B A, A B C: each configuration's mean moment is the same, so a linear drift of the machine cancels; the
    last round runs in order, so the configurations finish (and are printed) in order."""
    order = timing_order(["a", "b", "c"], 2)
    assert order == [(0, "c"), (0, "b"), (0, "a"), (1, "a"), (1, "b"), (1, "c")]
    moments = {key: sum(i for i, (_, k) in enumerate(order) if k == key) / 2 for key in "abc"}
    assert set(moments.values()) == {2.5}
    assert timing_order(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert timing_order(["a", "b"], 4)[-2:] == [(3, "a"), (3, "b")]
    assert timing_order(["a", "b"], 1) == [(0, "a"), (0, "b")]


def test_estimate_refuses_zero_rounds(capsys) -> None:
    assert main(["estimate", str(REPO / "spaces" / "quickstart.yaml"), "--rounds", "0"]) == 2
    assert "--steps, --warmup, --gpus and --rounds must be at least 1, got 30, 10, 1, 0" in capsys.readouterr().err


def test_estimate_of_data_parallel_trials_divides_the_timed_step_and_says_it_is_assumed(tmp_path: Path, capsys):
    data = (REPO / "samples" / "kodak-crops" / "train").as_posix()
    space = tmp_path / "dp.yaml"
    space.write_text(f"""
name: dp
trial:
  model: {{backbone: mbt2018-mean, N: 8, M: 8}}
  data: {{train: {data}, eval: {data}, batch_size: 2, crop_size: 64}}
  loss: {{lmbda: 0.013}}
  schedule: {{iterations: 100, eval_every: 50}}
resources: {{cpus_per_trial: 2, gpus_per_trial: 0, workers_per_trial: 2}}
""")
    assert main(["estimate", str(space), "--steps", "2", "--warmup", "1", "--device", "cpu", "--launch", "0"]) == 0
    out = capsys.readouterr().out
    timed = float(re.search(r"batch 2, crop 64, amp \w+: ([\d.e+-]+) s/iteration", out).group(1))
    assert "at 2 workers per trial: the times above / 2, assumed linear (not measured" in out
    grid = re.search(r"^grid \(every trial its full budget\): 100 iterations, ([\d.e+-]+) CPU-hours", out, re.M)
    assert float(grid.group(1)) > 0 and 100 * timed / 2 / 3600 <= float(grid.group(1)) * 1.006  # + evaluations


@pytest.mark.parametrize("preset, knob", [("ablation_llic.yaml", "llic"), ("msp_profiles.yaml", "msp")])
def test_each_kernel_variant_and_msp_profile_is_priced_apart(preset: str, knob: str) -> None:
    """What to time comes from the built model (its size) and its backbone's own knobs, not a hand list: the
    LLIC kernel variants and the MSP profiles (same widths, other work per step) each get their own timing."""
    for folder in (Path("spaces"), Path("spaces/smoke")):
        spec = load_space(folder / preset, check_data=False)  # full presets point at the user's data
        trials = plan_trials(spec, seed=spec.file.search.seed)
        variants = {spec.variants.label_of(t.config) or json.dumps(t.config["model"], sort_keys=True)
                    for t in trials}
        steps_per_variant: dict[str, set] = {}
        for trial in trials:
            label = spec.variants.label_of(trial.config) or json.dumps(trial.config["model"], sort_keys=True)
            steps_per_variant.setdefault(label, set()).update(
                (s.step.model, s.step.auxt) for s in trial.phases())
        assert len(variants) > 1
        keys = [frozenset(steps) for steps in steps_per_variant.values()]
        assert len(set(keys)) == len(keys), steps_per_variant  # no two variants share a timing
        assert all("params" in model for steps in keys for model, _ in steps)
    assert any(f"{knob}." in model for steps in keys for model, _ in steps)
