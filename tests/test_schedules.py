"""Schedules as search objects: lr shapes (step, cosine, plateau), staged crops, exact resume of
each, validation of mixed keys with key paths, PBT mutations of patience and min_lr, and the
check of a real search's MLflow histories (used by tests/test_presets_run.py)."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

from search.errors import SpaceError
from search.space import load_space
from tests.conftest import SAMPLES, tiny_trial
from trainables import metrics as M
from trainables.config import DataConfig, ScheduleConfig, TrialConfig
from trainables.data.crop_schedule import CropPlan
from trainables.data.images import make_train_loader
from trainables.errors import DataError
from trainables.training.checkpoint import load_checkpoint, save_checkpoint
from trainables.training.engine import Trainer
from trainables.training.lr_schedule import LrSchedule, lr_factor


def _lrs(schedule: ScheduleConfig) -> list[float]:
    return [schedule.lr * lr_factor(i, schedule) for i in range(schedule.iterations + 1)]


# ------------------------------------------------------------------------------ shapes
def test_cosine_warms_up_then_decreases_strictly_to_min_lr_at_the_end():
    schedule = ScheduleConfig(iterations=100, lr=1e-3, decay="cosine", min_lr=1e-5, warmup=10)
    lrs = _lrs(schedule)
    assert lrs[:10] == pytest.approx([1e-3 * (i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1e-3)
    assert all(b < a for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)  # half-way through the post-warm-up budget
    assert lrs[100] == pytest.approx(1e-5)


def test_step_is_constant_then_divided_by_gamma_at_each_milestone():
    schedule = ScheduleConfig(iterations=100, lr=1e-3, milestones=[0.5, 0.9], gamma=0.1)
    assert schedule.decay == "step"
    lrs = _lrs(schedule)
    assert set(lrs[:50]) == {1e-3}
    assert lrs[50:90] == pytest.approx([1e-4] * 40)
    assert lrs[90:] == pytest.approx([1e-5] * 11)


def test_plateau_decays_only_after_patience_evaluations_without_improvement_and_stops_at_min_lr():
    schedule = ScheduleConfig(iterations=100, lr=1.0, decay="plateau", gamma=0.5, patience=2, min_lr=0.2)
    plateau = LrSchedule(schedule)
    losses = [5.0, 4.0, 4.5, 4.2, 3.9, 4.0, 3.9, 4.0, math.nan, 4.0, 4.0, 4.0]
    factors = []
    for loss in losses:
        plateau.observe(loss)
        factors.append(plateau.factor(50))
    # An equal loss (3.9 again) or NaN is no improvement; the count restarts after each decay.
    assert factors == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2])


def test_plateau_and_cosine_fill_their_defaults_and_step_keeps_none():
    assert ScheduleConfig(iterations=10, decay="plateau").patience == 4  # STF's patience
    assert ScheduleConfig(iterations=10, decay="plateau").min_lr == 0.0
    assert ScheduleConfig(iterations=10, decay="cosine").min_lr == 0.0
    step = ScheduleConfig(iterations=10)
    assert (step.decay, step.patience, step.min_lr) == ("step", None, None)
    # A dumped config validates again to itself (checkpoints and MLflow hold dumps).
    for config in (step, ScheduleConfig(iterations=10, decay="plateau", patience=2, min_lr=1e-6)):
        assert ScheduleConfig.model_validate(config.model_dump(mode="json")) == config


# ---------------------------------------------------------------------------- crops
def _data(**overrides) -> DataConfig:
    fields = {"train": SAMPLES / "train", "eval": SAMPLES / "eval", "batch_size": 2, "num_workers": 0}
    return DataConfig(**(fields | overrides))


def test_crop_plan_numbers_samples_on_across_stages_and_matches_the_unstaged_numbering():
    staged = CropPlan.of(_data(crop_schedule=[[0.0, 64], [0.5, 128, 1], [0.75, 96, 3]]), iterations=8)
    batches = [staged.batch(k) for k in range(8)]
    assert [b.crop for b in batches] == [64] * 4 + [128] * 2 + [96] * 2
    assert [b.batch_size for b in batches] == [2] * 4 + [1] * 2 + [3] * 2
    assert [b.first_sample for b in batches] == [0, 2, 4, 6, 8, 9, 10, 13]  # no gap, no repeat
    plain = CropPlan.of(_data(crop_size=64), iterations=8)
    assert [plain.batch(k).first_sample for k in range(8)] == [2 * k for k in range(8)]


def test_staged_loader_switches_crop_and_batch_at_the_stage_and_resumes_exactly():
    cfg = _data(crop_schedule=[[0.0, 64], [0.5, 128, 1]])
    stream = make_train_loader(cfg, seed=3, iterations=8)
    full, crops = [], []
    for _ in range(8):
        full.append(next(stream))
        crops.append(stream.data_metrics()[M.TRAIN_CROP_SIZE])
    assert [tuple(b.shape) for b in full] == [(2, 3, 64, 64)] * 4 + [(1, 3, 128, 128)] * 4
    assert crops == [64.0] * 4 + [128.0] * 4
    for start, workers in ((3, 0), (4, 0), (6, 0), (3, 1)):
        resumed = make_train_loader(cfg.model_copy(update={"num_workers": workers}), seed=3, start_iteration=start,
                                    iterations=8)
        for k in range(start, 8):
            assert torch.equal(next(resumed), full[k]), (start, workers, k)
    unstaged = make_train_loader(_data(crop_size=64), seed=3)
    next(unstaged)
    assert M.TRAIN_CROP_SIZE not in unstaged.data_metrics()
    with pytest.raises(DataError, match="needs the iteration budget"):
        make_train_loader(cfg, seed=3)


# ------------------------------------------------------------------- exact resume
RESUME_CASES = {
    "step": {"schedule.milestones": [0.5], "schedule.gamma": 0.1, "schedule.eval_every": 2},
    "cosine": {"schedule.decay": "cosine", "schedule.min_lr": 1e-5, "schedule.warmup": 1},
    "plateau": {"schedule.decay": "plateau", "schedule.patience": 1, "schedule.gamma": 0.5,
                "schedule.eval_every": 1, "schedule.min_lr": 1e-5,
                "model.auxt.enabled": True},  # its eval loss stalls at the 2nd evaluation: decays from the 3rd
    "two-stage crops": {"data.crop_schedule": [[0.0, 64], [0.5, 128, 1]]},
}
COMPARED = (M.TRAIN_LR, M.TRAIN_CROP_SIZE, M.TRAIN_LOSS, M.TRAIN_BPP, M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR)


def _trainer(overrides: dict) -> Trainer:
    config = TrialConfig.model_validate(tiny_trial(**({"model.auxt.enabled": False} | overrides)))
    return Trainer(config, device=torch.device("cpu"))


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_interrupted_trial_continues_with_the_same_lr_crop_and_losses(case: str, tmp_path: Path):
    overrides = RESUME_CASES[case]
    uninterrupted = list(_trainer(overrides).train())
    cut = len(uninterrupted) // 2

    first = _trainer(overrides)
    stream = first.train()
    before = [next(stream) for _ in range(cut)]
    save_checkpoint(first.state_dict(), tmp_path)
    torch.manual_seed(12345)  # a fresh process has another global RNG state
    restored = _trainer(overrides)
    restored.load_state_dict(load_checkpoint(tmp_path))
    after = list(restored.train())

    assert [r[M.ITERATIONS] for r in before + after] == [r[M.ITERATIONS] for r in uninterrupted]
    for got, want in zip(before + after, uninterrupted):
        for name in COMPARED:
            assert got.get(name) == want.get(name), (case, got[M.ITERATIONS], name)
    lrs = [r[M.TRAIN_LR] for r in uninterrupted]
    if case == "two-stage crops":
        assert [r[M.TRAIN_CROP_SIZE] for r in uninterrupted] == [64.0, 128.0]  # 6 iterations, stage at 3
    else:
        # The schedule really moved the lr after the interruption (so its state had to survive).
        assert lrs[cut] < lrs[cut - 1] or lrs[-1] < lrs[cut - 1], lrs
    if case == "plateau":  # the checkpoint held a decayed plateau state
        assert load_checkpoint(tmp_path)["lr_schedule"]["plateau_factor"] < 1.0


# --------------------------------------------------------------------- validation
def _merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not ({"grid", "choice"} & set(value)):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _space(folder: Path, trial: dict) -> Path:
    base = tiny_trial()
    if "crop_schedule" in trial.get("data", {}):
        del base["data"]["crop_size"]  # crop_size is the first stage's crop
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "schedules", "trial": _merge(base, trial),
                                    "scheduler": {"type": "fifo"}}))
    return path


# name -> (trial overrides, key path, fragments of the message's first line)
INVALID = {
    "patience_with_step": ({"schedule": {"patience": 3}}, "trial.schedule.patience",
                           ["only decay plateau has patience", "decay is 'step'", "set schedule.decay to plateau"]),
    "milestones_with_cosine": ({"schedule": {"decay": "cosine", "milestones": [0.5]}}, "trial.schedule.milestones",
                               ["only decay step has milestones", "decay is 'cosine'"]),
    "min_lr_with_step": ({"schedule": {"min_lr": 1e-5}}, "trial.schedule.min_lr",
                         ["only decay cosine and plateau have min_lr", "decay is 'step'"]),
    "gamma_with_cosine": ({"schedule": {"decay": "cosine", "gamma": 0.3}}, "trial.schedule.gamma",
                          ["decay cosine has no gamma"]),
    "min_lr_above_lr": ({"schedule": {"decay": "cosine", "min_lr": 0.01}}, "trial.schedule.min_lr",
                        ["must be below schedule.lr (0.001)", "got 0.01"]),
    "unknown_decay": ({"schedule": {"decay": "cosin"}}, "trial.schedule.decay",
                      ["must be one of step, cosine, plateau", "did you mean 'cosine'?"]),
    "patience_with_a_step_grid_value": (
        {"schedule": {"decay": {"grid": ["plateau", "step"]}, "patience": 2}}, "trial.schedule.patience",
        ["only decay plateau has patience", "when trial.schedule.decay takes its grid value step"]),
    "stages_not_increasing": ({"data": {"crop_schedule": [[0.0, 64], [0.6, 128], [0.5, 64]]}},
                              "trial.data.crop_schedule", ["stage start fractions must increase", "[0.0, 0.6, 0.5]"]),
    "first_stage_late": ({"data": {"crop_schedule": [[0.2, 64]]}}, "trial.data.crop_schedule",
                         ["the first stage must start at 0.0"]),
    "stage_crop_below_the_crop_size_limit": ({"data": {"crop_schedule": [[0.0, 64], [0.5, 8]]}},
                                             "trial.data.crop_schedule",
                                             ["stage 1 ([0.5, 8])", "crop 8 must be an integer >= 16"]),
    "stage_crop_over_twice_the_images": ({"data": {"crop_schedule": [[0.0, 64], [0.5, 512, 1]]}},
                                         "trial.data.crop_schedule",
                                         ["512 is more than twice the largest training image side found, 128 px",
                                          "stage crops of at most 256"]),
    "first_stage_differs_from_crop_size": ({"data": {"crop_size": 128, "crop_schedule": [[0.0, 64]]}},
                                           "trial.data.crop_schedule",
                                           ["the first stage's crop (64) differs from data.crop_size (128)"]),
    "bad_stage_shape": ({"data": {"crop_schedule": [[0.0, 64], [0.5]]}}, "trial.data.crop_schedule",
                        ["stage 1 ([0.5])", "a stage is [fraction, crop], [fraction, crop, batch_size]"]),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_validation_refuses_mixed_schedule_keys_and_bad_crop_stages_at_their_key_path(name: str, tmp_path: Path):
    overrides, key_path, fragments = INVALID[name]
    path = _space(tmp_path, overrides)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert caught.value.key_path == key_path
    first_line = str(caught.value).splitlines()[0]
    assert first_line.startswith(f"{path}: {key_path}: ")
    assert "Value error" not in first_line
    for fragment in fragments:
        assert fragment in first_line, (fragment, first_line)


def test_schedules_and_crop_stages_are_searchable_with_the_usual_primitives(tmp_path: Path):
    path = _space(tmp_path, {
        "schedule": {"decay": {"grid": ["cosine", "plateau"]}, "min_lr": {"loguniform": [1e-6, 1e-4]}},
        "data": {"crop_schedule": {"grid": [[[0.0, 64]], [[0.0, 64], [0.5, 128, 1]]]}},
    })
    spec = load_space(path)
    assert spec.trial_count() == 4
    trials = [TrialConfig.model_validate(config) for config in spec.configs()]
    assert {(t.schedule.decay, len(t.data.crop_schedule)) for t in trials} == {
        ("cosine", 1), ("cosine", 2), ("plateau", 1), ("plateau", 2)}
    assert all(t.data.crop_size == 64 for t in trials)
    assert {t.schedule.patience for t in trials} == {None, 4}


# ------------------------------------------------------------------------------ PBT
def _pbt(**mutations):
    from search.space.sections import PBTMutations
    from search.tuning.schedulers import StratifiedPBT

    return StratifiedPBT(metric=M.EVAL_RD_LOSS, mode="min", perturbation_interval=2,
                         mutations=PBTMutations(**mutations), resample_probability=0.0)


def _config(**schedule) -> dict:
    return tiny_trial(**{f"schedule.{k}": v for k, v in schedule.items()})


def test_pbt_moves_plateau_patience_and_cosine_min_lr_only_where_the_decay_has_them():
    import random

    random.seed(0)
    pbt = _pbt(patience=[2, 4, 8], min_lr=(1e-6, 1e-4))
    plateau = _config(decay="plateau", patience=4, min_lr=1e-5)
    seen_patience, seen_min_lr = set(), set()
    for _ in range(40):
        new = pbt.explore_schedule(copy.deepcopy(plateau))
        seen_patience.add(new["schedule"]["patience"])
        seen_min_lr.add(new["schedule"]["min_lr"])
    assert seen_patience == {2, 8}  # a neighbour of 4 in the candidates
    assert seen_min_lr <= {1e-5 * 1.2, 1e-5 * 0.8} and len(seen_min_lr) == 2
    cosine = pbt.explore_schedule(_config(decay="cosine", min_lr=1e-4))
    assert "patience" not in cosine["schedule"]  # patience only with plateau
    assert cosine["schedule"]["min_lr"] in (pytest.approx(8e-5), 1e-4)  # x0.8, or x1.2 clipped to the range
    step = pbt.explore_schedule(_config(milestones=[0.5]))
    assert "patience" not in step["schedule"] and "min_lr" not in step["schedule"]
    for config in (cosine, step):
        TrialConfig.model_validate(config)


def test_pbt_mutation_keys_are_validated_with_their_key_path():
    from search.space.sections import PBTMutations

    with pytest.raises(ValueError, match="patience: at least two candidates, integers >= 1"):
        PBTMutations(patience=[4])
    with pytest.raises(ValueError, match="min_lr: `0 < low < high` must hold"):
        PBTMutations(min_lr=(1e-4, 1e-6))
    assert PBTMutations(patience=[2, 4]).lr is None  # patience alone is something to mutate


# ----------------------------------------------------------- a real search's histories
def _schedule_of(params: dict[str, str]) -> tuple[ScheduleConfig, DataConfig]:
    def value(text: str):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    def section(prefix: str) -> dict:
        return {key.removeprefix(prefix): value(text) for key, text in params.items()
                if key.startswith(prefix) and text != "None"}

    return ScheduleConfig.model_validate(section("schedule.")), DataConfig.model_validate(section("data."))


def check_schedule_histories(runs: list, tracking_uri: str) -> set[str]:
    """Each trial's MLflow ``train/lr`` (and ``train/crop_size``) history has its schedule's shape.

    Returns the decays seen. ``train/lr`` at step k is the lr of iteration k (after k steps);
    ``train/crop_size`` at step k is the crop of batch k − 1.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    decays = set()
    for run in runs:
        schedule, data = _schedule_of(run.data.params)
        decays.add(schedule.decay)

        def history(name: str) -> list[tuple[int, float]]:
            return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))

        lrs = history(M.TRAIN_LR)
        steps = [step for step, _ in lrs]
        assert steps == list(range(schedule.eval_every, schedule.iterations + 1, schedule.eval_every)), steps
        values = [v for _, v in lrs]
        if schedule.decay == "cosine":
            assert all(b < a for a, b in zip(values, values[1:])), values
            assert values[-1] == pytest.approx(schedule.min_lr)
        elif schedule.decay == "step":
            (milestone,) = [int(round(f * schedule.iterations)) for f in schedule.milestones]
            assert all(v == pytest.approx(schedule.lr) for s, v in lrs if s < milestone)
            assert all(v == pytest.approx(schedule.lr * schedule.gamma) for s, v in lrs if s >= milestone)
            assert any(s < milestone for s in steps) and any(s >= milestone for s in steps)
        else:  # plateau: replay the rule on the trial's own eval/rd_loss
            losses = dict(history(M.EVAL_RD_LOSS))
            replay = LrSchedule(schedule)
            expected = []
            for step in steps:
                expected.append(schedule.lr * replay.factor(step))
                replay.observe(losses[step])
            assert values == pytest.approx(expected, rel=1e-9), (values, [losses[s] for s in steps])
            assert min(values) < schedule.lr  # it did decay in this run
        if data.crop_schedule:
            plan = CropPlan.of(data, schedule.iterations)
            crops = history(M.TRAIN_CROP_SIZE)
            assert [c for _, c in crops] == [float(plan.crop_at(s - 1)) for s, _ in crops]
            assert len({c for _, c in crops}) == len(data.crop_schedule)  # every stage was trained
    return decays


def test_asha_compares_trials_only_at_equal_decay_when_decays_vary(tmp_path: Path):
    trial = {"schedule": {"decay": {"grid": ["step", "cosine"]}}}
    path = _space(tmp_path, trial)
    text = yaml.safe_load(path.read_text())
    text["scheduler"] = {"type": "asha"}
    path.write_text(yaml.safe_dump(text))
    spec = load_space(path)
    assert spec.stratify_by() == ["loss.lmbda", "loss.distortion", "schedule.decay"]


# --------------------------------------------------------------------------------- report
def test_report_plots_lr_and_staged_crop_size_per_family_next_to_convergence(tmp_path: Path):
    from search.analysis.report import SearchRecord, TrialRecord, build_report
    from search.analysis.report_render import PLOT_CONVERGENCE, PLOT_SCHEDULE

    steps = (100, 200, 300, 400)

    def trial(trial_id: str, lmbda: float, decay: str, lrs, crops=()) -> TrialRecord:
        params = {"loss.lmbda": str(lmbda), "loss.distortion": "mse", "model.auxt.enabled": "True",
                  "schedule.decay": decay}
        histories = {M.EVAL_RD_LOSS: [(s, 1.0 / (k + 1)) for k, s in enumerate(steps)],
                     M.EVAL_BPP: [(s, 0.5 + lmbda) for s in steps], M.EVAL_PSNR: [(s, 30 + 100 * lmbda) for s in steps],
                     M.TRAIN_LR: list(zip(steps, lrs))}
        if crops:
            histories[M.TRAIN_CROP_SIZE] = list(zip(steps, crops))
        return TrialRecord(trial_id, trial_id, "completed", params, histories)

    trials = [trial("step_a", 0.0067, "step", (1e-4, 1e-4, 1e-5, 1e-5)),
              trial("step_b", 0.013, "step", (1e-4, 1e-4, 1e-5, 1e-5)),
              trial("cos_a", 0.0067, "cosine", (9e-5, 5e-5, 1e-5, 1e-6), crops=(256, 256, 512, 512)),
              trial("cos_b", 0.013, "cosine", (9e-5, 5e-5, 1e-5, 1e-6), crops=(256, 256, 512, 512))]
    report = build_report(SearchRecord("schedules", "sqlite:///unused.db", None, trials), tmp_path)
    schedules = {s["trial_id"]: s for s in report.data["schedules"]}
    assert [c for _, c in schedules["cos_a"]["crop_size"]] == [256, 256, 512, 512]
    assert [v for _, v in schedules["step_b"]["lr"]] == [1e-4, 1e-4, 1e-5, 1e-5]
    assert schedules["step_b"]["crop_size"] == []
    assert len({schedules[t]["family"] for t in ("step_a", "step_b")}) == 1  # one family, several λ
    assert schedules["step_a"]["family"] != schedules["cos_a"]["family"]
    assert report.data["plots"][PLOT_SCHEDULE] == PLOT_SCHEDULE
    markdown = report.markdown.read_text()
    assert markdown.index(PLOT_CONVERGENCE) < markdown.index(PLOT_SCHEDULE)  # beside the convergence plot
    assert (tmp_path / PLOT_SCHEDULE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pbt_repair_keeps_mutated_configs_valid_for_every_decay():
    pbt = _pbt(lr=(1e-5, 1e-2), gamma=[0.1, 0.3], milestones=[[0.5], [0.8]])
    cosine = pbt.repair(_config(decay="cosine", min_lr=5e-4, lr=1e-4, gamma=0.3, milestones=[0.8]))
    assert "gamma" not in cosine["schedule"] and "milestones" not in cosine["schedule"]
    assert cosine["schedule"]["min_lr"] == pytest.approx(1e-5)  # was above the mutated lr: lr / 10
    plateau = pbt.repair(_config(decay="plateau", gamma=0.3, milestones=[0.5]))
    assert plateau["schedule"]["gamma"] == 0.3 and "milestones" not in plateau["schedule"]
    step = pbt.repair(_config(gamma=0.3, milestones=[0.8, 0.5]))
    assert step["schedule"]["milestones"] == [0.5, 0.8]


def test_pbt_exploit_through_ray_mutates_patience_and_min_lr_within_bounds_for_every_decay():
    """Ray's own exploit path (a stratum's stock PBT ``_get_new_config``: its explore, then ours and the repair as
    custom_explore_fn)."""
    import random

    from ray.tune.experiment import Trial

    random.seed(2)
    pbt = _pbt(lr=(1e-5, 1e-2), gamma=[0.1, 0.3], patience=[1, 2, 4], min_lr=(1e-7, 1e-5))
    child = Trial("lic", config=_config(decay="plateau", patience=4, min_lr=1e-6), trial_id="child", stub=True)
    seen = set()
    for decay, extra in (("plateau", {"patience": 4, "min_lr": 1e-6, "gamma": 0.1}),
                         ("cosine", {"min_lr": 1e-6}), ("step", {"milestones": [0.5], "gamma": 0.1})):
        parent = Trial("lic", config=_config(decay=decay, **extra), trial_id=f"parent_{decay}", stub=True)
        for _ in range(30):
            with pbt.defaults_filled([parent]):  # what on_trial_result does around Ray's exploit
                config, _ = pbt.population(child)._get_new_config(child, parent)
            checked = TrialConfig.model_validate(config).schedule
            assert checked.decay == decay and 1e-5 <= checked.lr <= 1e-2
            if decay == "plateau":
                assert checked.patience in (1, 2, 4)
                seen.add(checked.patience)
            else:
                assert checked.patience is None
            if decay == "step":
                assert checked.min_lr is None
            else:
                assert 1e-7 <= checked.min_lr <= 1e-5 and checked.min_lr < checked.lr
            parent.config = config
    assert seen == {1, 2, 4}
