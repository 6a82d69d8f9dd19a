"""Rate, R-D losses, PSNR / MS-SSIM and the energy-compaction telemetry, against hand
computations and against CompressAI / pytorch_msssim themselves."""

from __future__ import annotations

import math

import pytest
import pytorch_msssim
import torch
from compressai.losses import RateDistortionLoss as CompressAIRateDistortionLoss

from trainables.config import MS_SSIM_LAMBDAS, MSE_LAMBDAS
from trainables.losses import (
    DISTORTIONS,
    MEASURED,
    LossError,
    RateDistortionLoss,
    _truncated_ms_ssim,
    bpp,
    branch_energy_share,
    ms_ssim,
    ms_ssim_levels,
    multiscale_ssim,
    psnr,
    rd_loss_value,
    register_distortion,
    top_channel_energy_share,
)


def _model_output(target: torch.Tensor, offset: float = 0.1) -> dict:
    likelihoods = {"y": torch.full((target.shape[0], 4, 2, 2), 0.5, requires_grad=True),
                   "z": torch.full((target.shape[0], 2, 1, 1), 0.25, requires_grad=True)}
    x_hat = (target + offset).detach().requires_grad_(True)
    return {"x_hat": x_hat, "likelihoods": likelihoods}


# --------------------------------------------------------------------------- rate
def test_bpp_against_a_hand_computation():
    likelihoods = {"y": torch.full((1, 4, 2, 2), 0.5), "z": torch.full((1, 2, 1, 1), 0.25)}
    # 16 symbols × 1 bit + 2 symbols × 2 bits = 20 bits over 8×8 pixels.
    assert float(bpp(likelihoods, 64)) == pytest.approx(20 / 64)
    nested = {"y": {"group0": torch.full((1, 4, 2, 2), 0.5)}, "z": [torch.full((1, 2, 1, 1), 0.25)]}
    assert float(bpp(nested, 64)) == pytest.approx(20 / 64)


def test_bpp_rejects_bad_pixel_counts_and_empty_likelihoods():
    with pytest.raises(LossError, match="num_pixels must be > 0, got 0"):
        bpp({"y": torch.ones(1)}, 0)
    with pytest.raises(LossError, match="no tensor"):
        bpp({}, 10)


# ------------------------------------------------------------------------ R-D loss
def test_mse_rd_loss_formula_by_hand():
    target = torch.full((1, 3, 8, 8), 0.5)
    out = _model_output(target, offset=0.1)
    terms = RateDistortionLoss("mse", 0.013)(out, target)
    mse = 0.01
    rate = 20 / 64
    assert terms["mse"].item() == pytest.approx(mse)
    assert terms["bpp"].item() == pytest.approx(rate)
    assert terms["distortion"].item() == pytest.approx(255**2 * mse)
    assert terms["loss"].item() == pytest.approx(0.013 * 255**2 * mse + rate)
    assert terms["rd_loss"] is terms["loss"]
    terms["loss"].backward()
    assert out["x_hat"].grad is not None and float(out["x_hat"].grad.abs().sum()) > 0
    assert out["likelihoods"]["y"].grad is not None


@pytest.mark.parametrize("distortion,side", [("mse", 32), ("ms-ssim", 176)])
def test_rd_loss_equals_compressai(distortion: str, side: int):
    torch.manual_seed(0)
    target = torch.rand(2, 3, side, side)
    out = {"x_hat": (target + 0.05 * torch.randn_like(target)).clamp(0, 1),
           "likelihoods": {"y": torch.rand(2, 8, 4, 4) * 0.9 + 0.05, "z": torch.rand(2, 4, 1, 1) * 0.9 + 0.05}}
    lmbda = 4.58 if distortion == "ms-ssim" else 0.0483
    ours = RateDistortionLoss(distortion, lmbda)(out, target)
    theirs = CompressAIRateDistortionLoss(lmbda=lmbda, metric=distortion)(out, target)
    assert ours["bpp"].item() == theirs["bpp_loss"].item()
    assert ours["loss"].item() == pytest.approx(theirs["loss"].item(), rel=1e-6)


def test_ms_ssim_rd_loss_formula():
    torch.manual_seed(1)
    target = torch.rand(1, 3, 64, 64)
    out = _model_output(target, offset=0.0)
    out["x_hat"] = (target * 0.9 + 0.05).requires_grad_(True)
    terms = RateDistortionLoss("ms-ssim", 8.73)(out, target)
    quality = float(multiscale_ssim(out["x_hat"].detach(), target))
    assert 0.0 < quality < 1.0
    assert terms["ms_ssim"].item() == pytest.approx(quality)
    assert terms["distortion"].item() == pytest.approx(1 - quality)
    assert terms["loss"].item() == pytest.approx(8.73 * (1 - quality) + 20 / (64 * 64))
    assert terms["mse"].item() == pytest.approx(float(((out["x_hat"].detach() - target) ** 2).mean()))
    terms["loss"].backward()
    assert float(out["x_hat"].grad.abs().sum()) > 0


def test_the_papers_lambdas_are_accepted_and_bad_arguments_are_errors():
    for lmbda in MSE_LAMBDAS:
        assert RateDistortionLoss("mse", lmbda).lmbda == lmbda
    for lmbda in MS_SSIM_LAMBDAS:
        assert RateDistortionLoss("ms-ssim", lmbda).lmbda == lmbda
    with pytest.raises(LossError, match=r"distortion must be one of \['ms-ssim', 'mse'\], got 'l1'"):
        RateDistortionLoss("l1", 0.01)
    with pytest.raises(LossError, match="lmbda must be a finite number > 0, got -1"):
        RateDistortionLoss("mse", -1)
    with pytest.raises(LossError, match="lmbda must be a finite number > 0, got nan"):
        RateDistortionLoss("mse", math.nan)


def test_registering_a_distortion_twice_is_an_error():
    assert {"mse", "ms-ssim"} <= set(DISTORTIONS)
    with pytest.raises(LossError, match="'mse' is already registered"):
        register_distortion("mse", measured=lambda values: 0.0)(lambda x_hat, x: (x.sum(), {}))


# ------------------------------------------------------------------------ MS-SSIM
def test_ms_ssim_scale_count_follows_image_size():
    assert [ms_ssim_levels(s, 1000) for s in (10, 11, 20, 21, 40, 41, 80, 81, 160, 161, 512)] == \
        [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_large_images_use_pytorch_msssim_unchanged_and_the_loop_agrees():
    torch.manual_seed(2)
    x = torch.rand(2, 3, 176, 168)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    reference = float(pytorch_msssim.ms_ssim(x, y, data_range=1.0))
    assert float(multiscale_ssim(x, y)) == reference
    # Our loop at 5 scales differs only by renormalising the weights (they sum to 1.0001).
    assert float(_truncated_ms_ssim(x, y, 1.0, 5)) == pytest.approx(reference, rel=2e-5)


def test_small_images_fall_back_to_fewer_scales():
    torch.manual_seed(3)
    x = torch.rand(1, 3, 16, 20)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    # One scale is plain SSIM.
    assert float(multiscale_ssim(x, y)) == pytest.approx(float(pytorch_msssim.ssim(x, y, data_range=1.0)))
    crops = torch.rand(2, 3, 64, 64)
    assert 0.0 < float(multiscale_ssim(crops, (crops + 0.05).clamp(0, 1))) < 1.0
    with pytest.raises(LossError, match="larger than 10 px.*10x40"):
        multiscale_ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))
    assert ms_ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40)) is None


def test_eval_ms_ssim_clamps_the_reconstruction():
    torch.manual_seed(4)
    x = torch.rand(1, 3, 64, 64)
    assert ms_ssim(x, x) == pytest.approx(1.0)
    overshoot = x.clone()
    overshoot[x > 0.9] = 1.5  # out-of-range reconstruction
    assert ms_ssim(overshoot, x) == pytest.approx(float(multiscale_ssim(overshoot.clamp(0, 1), x)))
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert 0.0 < ms_ssim(noisy, x) < 1.0


# --------------------------------------------------------------------------- PSNR
def test_psnr_known_values():
    y = torch.full((1, 3, 8, 8), 0.5)
    assert psnr(y + 0.1, y) == pytest.approx(20.0)  # MSE 0.01 → 10·log10(1/0.01)
    assert psnr(y + 0.01, y) == pytest.approx(40.0)
    assert psnr(y * 255 + 1, y * 255, data_range=255.0) == pytest.approx(10 * math.log10(255**2))
    assert psnr(y, y) == math.inf


def test_psnr_clamps_the_reconstruction_and_averages_per_image():
    target = torch.ones(1, 3, 4, 4)
    assert psnr(target + 0.5, target) == math.inf  # 1.5 clamps to 1.0
    batch_target = torch.full((2, 3, 4, 4), 0.5)
    batch = batch_target.clone()
    batch[0] += 0.1  # 20 dB
    batch[1] += 0.01  # 40 dB
    assert psnr(batch, batch_target) == pytest.approx(30.0)


# ---------------------------------------------------------------------- telemetry
def test_all_energy_in_one_channel_of_ten_is_share_one():
    y = torch.zeros(1, 10, 4, 4)
    y[:, 3] = torch.randn(4, 4)
    assert top_channel_energy_share(y) == pytest.approx(1.0)


def test_top_channel_share_of_known_energies():
    # Channel c has energy (c + 1) · 16 (16 positions of value sqrt(c + 1)); 20 channels → top 2.
    energies = torch.arange(1, 21, dtype=torch.float64)
    y = energies.sqrt().view(1, 20, 1, 1).expand(1, 20, 4, 4)
    assert top_channel_energy_share(y) == pytest.approx((20 + 19) / energies.sum().item())
    uniform = torch.ones(2, 10, 3, 3)
    assert top_channel_energy_share(uniform) == pytest.approx(0.1)
    assert top_channel_energy_share(uniform, fraction=0.5) == pytest.approx(0.5)
    # 10% of 30 channels is 3 (0.1·30 = 3.0000000000000004 in floating point must not round up to 4).
    assert top_channel_energy_share(torch.ones(1, 30, 2, 2)) == pytest.approx(0.1)
    # Negative values count by their square; the batch and (C, H, W) forms agree.
    signed = torch.randn(3, 12, 5, 5)
    assert top_channel_energy_share(-signed) == pytest.approx(top_channel_energy_share(signed))
    assert top_channel_energy_share(signed[0]) == pytest.approx(top_channel_energy_share(signed[:1]))
    assert math.isnan(top_channel_energy_share(torch.zeros(1, 10, 2, 2)))
    with pytest.raises(LossError, match="fraction must be in"):
        top_channel_energy_share(signed, fraction=0.0)


def test_branch_energy_share_definition():
    torch.manual_seed(5)
    nonlinear = torch.zeros(1, 4, 2, 2)
    nonlinear[:, :2] = 1.0  # energy 8
    branch = torch.zeros(1, 4, 2, 2)
    branch[:, 2:] = 2.0  # energy 32
    assert branch_energy_share(nonlinear + branch, branch) == pytest.approx(32 / 40)
    y = torch.randn(1, 8, 4, 4)
    assert branch_energy_share(y, y) == pytest.approx(1.0)
    assert branch_energy_share(y, torch.zeros_like(y)) == pytest.approx(0.0)
    # Cancelling branches (y = 0) still give a share in [0, 1]: equal energies → 0.5.
    assert branch_energy_share(torch.zeros_like(y), y) == pytest.approx(0.5)
    assert math.isnan(branch_energy_share(torch.zeros_like(y), torch.zeros_like(y)))
    with pytest.raises(LossError, match="same shape"):
        branch_energy_share(y, y[:, :4])


@pytest.mark.parametrize("distortion", ["mse", "ms-ssim"])
def test_measured_rd_loss_is_the_training_loss(distortion):
    """Evaluation and the LOF sweep score with rd_loss_value: for one reconstruction it equals what
    RateDistortionLoss trained on (λ·D + bpp with the same D), for every registered distortion."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    likelihoods = {"y": torch.full((1, 8, 16, 16), 0.5)}
    trained = RateDistortionLoss(distortion, 0.013)({"x_hat": x_hat, "likelihoods": likelihoods}, x)
    measured = rd_loss_value(distortion, 0.013, float(trained["bpp"]), mse=float(trained["mse"]),
                             ms_ssim=float(trained["ms_ssim"]) if "ms_ssim" in trained else None)
    assert measured == pytest.approx(float(trained["loss"]), rel=1e-5)
    assert set(MEASURED) == set(DISTORTIONS)  # every distortion says how to score a measured reconstruction
