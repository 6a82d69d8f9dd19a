"""Latent overfitting: lower real-bitstream R-D loss than plain encoding, decoded by the unchanged model."""

from __future__ import annotations

import pytest
import torch
from conftest import SAMPLES, tiny_trial

from trainables.backbones import BACKBONES
from trainables.config import ModelConfig, TrialConfig
from trainables.evaluation import EvalResult, evaluate_model
from trainables.lof import LOFCodec, LOFConfig, LOFError, hyper_analysis_path, injected_latents, refine_latents
from trainables.losses import RateDistortionLoss
from trainables.model import create_model
from trainables.training.engine import Trainer

EVAL = SAMPLES / "eval"


def _trained(backbone: str, N: int, M: int, iterations: int):
    config = TrialConfig.model_validate(tiny_trial(**{
        "model.backbone": backbone, "model.N": N, "model.M": M, "model.auxt.enabled": backbone == "stf",
        "schedule.iterations": iterations, "schedule.eval_every": iterations, "loss.lmbda": 0.0483,
    }))
    trainer = Trainer(config, torch.device("cpu"))
    for _ in trainer.train():
        pass
    model = trainer.model.eval()
    model.update(force=True)
    return model, config


def _real_rd_loss(result: EvalResult, lmbda: float) -> float:
    """λ·255²·MSE + bpp per image from the decoded 8-bit image and the bitstream bytes."""
    losses = [lmbda * 255 ** 2 * 10 ** (-r.psnr / 10) + r.bpp for r in result.images]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("backbone, N, M, iterations, max_images", [
    ("mbt2018-mean", 8, 8, 40, 4),  # convolutional
    ("stf", 12, 96, 24, 1),         # channel-context (+ AuxT), the slowest per step: one image
])
def test_lof_50_steps_lowers_the_real_rd_loss_and_decodes_with_the_unchanged_model(
        backbone: str, N: int, M: int, iterations: int, max_images: int) -> None:
    model, config = _trained(backbone, N, M, iterations)
    loss = RateDistortionLoss(config.loss.distortion, config.loss.lmbda)
    device = torch.device("cpu")
    plain = evaluate_model(LOFCodec(model, loss, LOFConfig(iterations=0)), EVAL, device, max_images=max_images)
    lof = evaluate_model(LOFCodec(model, loss, LOFConfig(iterations=50, lr=1e-2)), EVAL, device,
                         max_images=max_images)
    assert plain.decoded_matches and lof.decoded_matches  # decoded by model.decompress == refined forward
    before, after = _real_rd_loss(plain, config.loss.lmbda), _real_rd_loss(lof, config.loss.lmbda)
    assert after < 0.99 * before, (before, after)
    assert lof.mean("encoding_time") > plain.mean("encoding_time")  # the refinement is timed as encoding

    # "Any decoder of the same checkpoint": a freshly built model with the same weights decodes
    # the LOF bitstream to the same image.
    x = torch.rand(1, 3, 64, 64)
    codec = LOFCodec(model, loss, LOFConfig(iterations=5, lr=1e-2))
    encoded = codec.compress(x)
    fresh = create_model(config.model)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh.decompress(encoded["strings"], encoded["shape"])["x_hat"],
                               codec(x)["x_hat"].clamp(0, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("latents", ["y", "y+z"])
def test_every_backbone_refines_its_latents_with_weights_unchanged(name: str, latents: str) -> None:
    N, M = BACKBONES[name].test_widths
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone=name, N=N, M=M, auxt={"enabled": True})).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # masked convolutions (ELIC's checkerboard) zero their masked weights on first use
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LOFConfig(iterations=3, lr=0.05, latents=latents, proxy="noise")
    result = refine_latents(model, x, RateDistortionLoss("mse", 0.0483), cfg)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.final_loss <= result.initial_loss
    assert (result.z is not None) is (latents == "y+z")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again
    encoded = LOFCodec(model, RateDistortionLoss("mse", 0.0483), cfg).compress(x)
    assert model.decompress(encoded["strings"], encoded["shape"])["x_hat"].shape == x.shape
    assert isinstance(model.backbone.get_submodule(hyper_analysis_path(model.backbone)), torch.nn.Module)


def test_injection_is_undone_and_changes_only_the_latent() -> None:
    model = create_model(ModelConfig(backbone="mbt2018-mean", N=8, M=8)).eval()
    g_a = model.backbone.g_a
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = g_a(x)
        reference = model.backbone(x)["x_hat"]
        with injected_latents(model.backbone, y):
            same = model.backbone(torch.zeros_like(x))["x_hat"]  # the input is ignored
        with injected_latents(model.backbone, y + 3):
            other = model.backbone(x)["x_hat"]
    assert model.backbone.g_a is g_a
    torch.testing.assert_close(same, reference)
    assert not torch.allclose(other, reference)


@pytest.mark.parametrize("kwargs, key", [
    ({"iterations": -1}, "lof.iterations"), ({"lr": 0.0}, "lof.lr"), ({"latents": "z"}, "lof.latents"),
    ({"proxy": "gumbel"}, "lof.proxy"), ({"tau_min": 1.0, "tau_max": 0.5}, "tau_min <= tau_max"),
])
def test_settings_out_of_range_are_user_errors(kwargs: dict, key: str) -> None:
    with pytest.raises(LOFError, match=key):
        LOFConfig(**kwargs)


def test_labels_name_the_setting() -> None:
    assert LOFConfig(iterations=0).label == "lof0"
    assert LOFConfig(iterations=50, lr=0.01).label == "lof50-lr0.01"
    assert LOFConfig(iterations=200, lr=0.003, latents="y+z", proxy="ste").label == "lof200-lr0.003-yz-ste"


def test_eval_command_writes_one_named_curve_per_lof_setting(tmp_path) -> None:
    import json

    from search.cli import main
    from trainables.training.checkpoint import save_checkpoint

    config = TrialConfig.model_validate(tiny_trial(**{"model.auxt.enabled": False, "schedule.iterations": 4,
                                                      "schedule.eval_every": 4}))
    trainer = Trainer(config, torch.device("cpu"))
    for _ in trainer.train():
        pass
    checkpoint = tmp_path / "checkpoint_000004"
    save_checkpoint(trainer.state_dict(), checkpoint)
    out = tmp_path / "rd.json"
    assert main(["eval", str(checkpoint), "--data", str(EVAL), "--max-images", "1", "--device", "cpu",
                 "--lof-iterations", "0,5", "--lof-lr", "0.01,0.02", "--json", str(out)]) == 0
    files = sorted(p.name for p in tmp_path.glob("rd-*.json"))
    assert files == ["rd-lof0.json", "rd-lof5-lr0.01.json", "rd-lof5-lr0.02.json"]
    curves = {f: json.loads((tmp_path / f).read_text()) for f in files}
    assert curves["rd-lof5-lr0.01.json"]["name"] == "checkpoint_000004 lof5-lr0.01"
    for curve in curves.values():
        results = curve["results"]
        assert len(results["bpp"]) == 1 and results["bpp"][0] > 0
        assert results["encoding_time"][0] > 0 and results["decoding_time"][0] > 0
    lof_enc = curves["rd-lof5-lr0.01.json"]["results"]["encoding_time"][0]
    assert lof_enc > curves["rd-lof0.json"]["results"]["encoding_time"][0]


def test_eval_command_rejects_a_malformed_iteration_list(tmp_path, capsys) -> None:
    from search.cli import main

    assert main(["eval", str(tmp_path / "nope"), "--data", str(EVAL), "--lof-iterations", "0,fifty"]) == 2
    assert "--lof-iterations" in capsys.readouterr().err
