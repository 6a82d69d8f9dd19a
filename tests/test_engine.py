"""Training engine: exact resume, atomic checkpoints, NaN detection, LR schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_trial
from trainables import metrics as M
from trainables.config import ScheduleConfig, TrialConfig
from trainables.errors import TrainingDivergedError
from trainables.training.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint
from trainables.training.engine import Trainer, lr_factor


def _trainer(**overrides) -> Trainer:
    return Trainer(TrialConfig.model_validate(tiny_trial(**overrides)), device=torch.device("cpu"))


def test_evaluation_reports_the_required_metrics():
    results = list(_trainer().train())
    assert [r[M.ITERATIONS] for r in results] == [3, 6]
    last = results[-1]
    for name in (M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR, M.EVAL_TOP10_ENERGY, M.EVAL_AUXT_ENERGY,
                 M.TRAIN_LOSS, M.TRAIN_ORTHO_LOSS):
        assert math.isfinite(last[name]), name
    assert last[M.EVAL_RD_LOSS] == pytest.approx(0.013 * 255**2 * last[M.EVAL_MSE] + last[M.EVAL_BPP])
    assert 0.0 < last[M.EVAL_TOP10_ENERGY] <= 1.0
    assert 0.0 <= last[M.EVAL_AUXT_ENERGY] <= 1.0
    assert last[M.EVAL_BPP] > 0 and 0 < last[M.EVAL_PSNR] < 60


def test_evaluation_keeps_each_images_values_with_its_name():
    trainer = _trainer()
    result = trainer.evaluate()
    table = M.PerImage.from_json(result[M.EVAL_IMAGES])
    assert table.names == [name for name, _ in trainer._eval_images] and len(table.names) >= 2
    for column, metric in (("bpp", M.EVAL_BPP), ("psnr", M.EVAL_PSNR), ("mse", M.EVAL_MSE),
                           ("rd_loss", M.EVAL_RD_LOSS)):
        values = table.columns[column]
        assert sum(values) / len(values) == pytest.approx(result[metric], rel=1e-6), column  # the mean is theirs
    assert len(set(table.columns["bpp"])) > 1  # really per image, not the mean repeated
    if M.EVAL_MS_SSIM in result:
        assert sum(table.columns["ms_ssim"]) / len(table.names) == pytest.approx(result[M.EVAL_MS_SSIM])


def test_restored_run_continues_exactly(tmp_path: Path):
    uninterrupted = list(_trainer().train())

    first = _trainer()
    stream = first.train()
    halfway = next(stream)
    assert halfway[M.ITERATIONS] == 3
    save_checkpoint(first.state_dict(), tmp_path)
    # Disturb the global RNG as a fresh process would have it different.
    torch.manual_seed(12345)
    restored = _trainer()
    restored.load_state_dict(load_checkpoint(tmp_path))
    continued = list(restored.train())

    assert halfway[M.TRAIN_LOSS] == uninterrupted[0][M.TRAIN_LOSS]
    assert len(continued) == 1 and continued[0][M.ITERATIONS] == 6
    for name in (M.TRAIN_LOSS, M.TRAIN_BPP, M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR):
        assert continued[0][name] == uninterrupted[1][name], name


def test_checkpoint_holds_everything_and_loads_weights_only(tmp_path: Path):
    trainer = _trainer()
    next(trainer.train())
    save_checkpoint(trainer.state_dict(), tmp_path)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["iteration"] == 3
    assert {"model", "optimizer", "aux_optimizer", "scheduler", "rng", "config"} <= set(state)
    assert (tmp_path / "trial_config.yaml").read_text().startswith("model:")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch):
    trainer = _trainer()
    save_checkpoint(trainer.state_dict(), tmp_path)
    before = (tmp_path / STATE_FILE).read_bytes()

    def crash_midway(obj, stream, *args, **kwargs):
        stream.write(b"partial garbage")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(trainer.state_dict(), tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert load_checkpoint(tmp_path)["iteration"] == 0


def test_non_finite_loss_names_iteration_and_term():
    trainer = _trainer(**{"loss.lmbda": 1e38})  # λ·255²·MSE overflows float32 to inf
    with pytest.raises(TrainingDivergedError, match=r"iteration 1: .*train/rd_loss=inf"):
        list(trainer.train())


def test_lr_schedule_warmup_and_decay_at_fractions():
    schedule = ScheduleConfig(iterations=100, milestones=[0.5, 0.9], gamma=0.1, warmup=10)
    assert lr_factor(0, schedule) == pytest.approx(0.1)
    assert lr_factor(9, schedule) == pytest.approx(1.0)
    assert lr_factor(49, schedule) == pytest.approx(1.0)
    assert lr_factor(50, schedule) == pytest.approx(0.1)
    assert lr_factor(90, schedule) == pytest.approx(0.01)


def test_bf16_autocast_keeps_entropy_models_and_likelihoods_in_fp32():
    trainer = _trainer(**{"performance.amp": "bf16"})
    seen: list[torch.dtype] = []
    from compressai.entropy_models import EntropyModel

    for module in trainer.model.modules():
        if isinstance(module, EntropyModel):
            # outputs are (y_hat, likelihoods); without the fp32 guard, autocast makes them bf16
            module.register_forward_hook(lambda m, args, out: seen.append(out[1].dtype))
    terms = trainer._step(next(__import__("trainables.data.images", fromlist=["x"]).make_train_loader(
        trainer.config.data, seed=0)))
    assert seen and set(seen) == {torch.float32}
    assert all(torch.isfinite(v) for v in terms.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = trainer.model(torch.rand(1, 3, 64, 64))
    assert all(v.dtype == torch.float32 for v in out["likelihoods"].values())


def test_guarded_entropy_model_computes_exactly_as_without_autocast():
    from compressai.entropy_models import EntropyBottleneck

    from trainables.training.engine import keep_entropy_models_in_fp32

    torch.manual_seed(0)
    bottleneck = EntropyBottleneck(8).eval()
    z = torch.randn(1, 8, 4, 4) * 3
    _, reference = bottleneck(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, unguarded = bottleneck(z)
    assert not torch.equal(unguarded.float(), reference)  # autocast really changes the rate term
    assert keep_entropy_models_in_fp32(bottleneck, "cpu") == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, guarded = bottleneck(z.bfloat16())
    assert guarded.dtype == torch.float32
    assert torch.allclose(guarded, bottleneck(z.bfloat16().float())[1], rtol=0, atol=0)
