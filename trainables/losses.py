"""Rate-distortion objectives, quality metrics and the energy-compaction telemetry.

Objective (paper Eq. 6 without the orthogonality term, which the engine adds and logs on
its own): ``L = λ·D + R`` with R the bits per pixel from the likelihoods and, as in
CompressAI's ``RateDistortionLoss`` and the paper's two λ families
(:data:`trainables.config.MSE_LAMBDAS`, :data:`trainables.config.MS_SSIM_LAMBDAS`):

- ``mse``:     D = 255²·MSE(x̂, x)   (x in [0, 1], so D is the MSE on the 0..255 scale)
- ``ms-ssim``: D = 1 − MS-SSIM(x̂, x) (data_range = 1)

Telemetry (paper Figures 1, 2 and 6): the share of latent energy held by the top 10% of
channels, and the AuxT branch's share of the latent energy.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as _pytorch_ms_ssim
from torch import Tensor, nn

from trainables.errors import LicSearchError

__all__ = [
    "LossError",
    "DISTORTIONS",
    "register_distortion",
    "rd_loss_value",
    "bpp",
    "RateDistortionLoss",
    "MS_SSIM_WEIGHTS",
    "ms_ssim_levels",
    "multiscale_ssim",
    "ms_ssim",
    "psnr",
    "top_channel_energy_share",
    "branch_energy_share",
]


class LossError(LicSearchError):
    """A loss or metric was asked for something it cannot compute (unknown name, tiny image)."""


# ---------------------------------------------------------------------------- rate
Likelihoods = Union[Tensor, Mapping[str, Any], list, tuple]


def _leaves(likelihoods: Likelihoods) -> list[Tensor]:
    if isinstance(likelihoods, Tensor):
        return [likelihoods]
    values = likelihoods.values() if isinstance(likelihoods, Mapping) else likelihoods
    return [leaf for value in values for leaf in _leaves(value)]


def bpp(likelihoods: Mapping[str, Likelihoods], num_pixels: int) -> Tensor:
    """Bits per pixel: Σ over every likelihood tensor of −log2(p), divided by ``num_pixels``.

    ``num_pixels`` is N·H·W of the (unpadded) input batch. Nested dicts/lists of tensors
    (latent codecs with several groups) are summed too. Same arithmetic, in the same order,
    as CompressAI's ``RateDistortionLoss`` (Σ_tensors log(p).sum() / (−ln 2 · pixels)).
    """
    if num_pixels <= 0:
        raise LossError(f"num_pixels must be > 0, got {num_pixels}")
    leaves = _leaves(likelihoods)
    if not leaves:
        raise LossError("likelihoods hold no tensor; the model returned an empty 'likelihoods'")
    denominator = -math.log(2) * num_pixels
    total = torch.log(leaves[0]).sum() / denominator
    for leaf in leaves[1:]:
        total = total + torch.log(leaf).sum() / denominator
    return total


# ---------------------------------------------------------------------- MS-SSIM
# Wang et al. 2003 scale weights, finest first (pytorch_msssim's defaults).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11


def ms_ssim_levels(height: int, width: int) -> int:
    """How many MS-SSIM scales an image allows: the most L ≤ 5 with min side > 10·2^(L−1).

    That is pytorch_msssim's own rule for 5 scales (side > 160, so the coarsest scale is
    still at least the 11-px Gaussian window), applied per scale count: 161+ px → 5,
    81-160 → 4, 41-80 → 3, 21-40 → 2, 11-20 → 1 (plain SSIM), ≤ 10 → 0 (undefined).
    """
    side = min(height, width)
    levels = 0
    while levels < len(MS_SSIM_WEIGHTS) and side > (_WIN_SIZE - 1) * 2**levels:
        levels += 1
    return levels


def multiscale_ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Differentiable MS-SSIM of two (N, 3, H, W) batches, averaged over the batch.

    Images larger than 160 px use pytorch_msssim's standard 5-scale MS-SSIM unchanged.
    Smaller ones (training crops under 161 px) use the first L = :func:`ms_ssim_levels`
    scales with the standard weights renormalised to sum to 1 — for L = 1 this is SSIM —
    because pytorch_msssim refuses them outright. So MS-SSIM values on crops ≤ 160 px are
    not comparable with published (5-scale) figures; evaluation on Kodak (512×768) is.
    Raises :class:`LossError` when the shorter side is ≤ 10 px.
    """
    if x.shape != y.shape:
        raise LossError(f"MS-SSIM needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    height, width = int(x.shape[-2]), int(x.shape[-1])
    levels = ms_ssim_levels(height, width)
    if levels == 0:
        raise LossError(f"MS-SSIM needs images larger than {_WIN_SIZE - 1} px on the shorter side, "
                        f"got {height}x{width}")
    x, y = x.float(), y.float()
    if levels == len(MS_SSIM_WEIGHTS):
        return _pytorch_ms_ssim(x, y, data_range=data_range, size_average=True)
    return _truncated_ms_ssim(x, y, data_range, levels)


def _truncated_ms_ssim(x: Tensor, y: Tensor, data_range: float, levels: int) -> Tensor:
    """pytorch_msssim's MS-SSIM loop over ``levels`` scales with renormalised weights."""
    from pytorch_msssim.ssim import (  # the library's own SSIM pieces
        _fspecial_gauss_1d,
        _ssim,
    )

    weights = x.new_tensor(MS_SSIM_WEIGHTS[:levels])
    weights = weights / weights.sum()
    window = _fspecial_gauss_1d(_WIN_SIZE, 1.5).repeat([x.shape[1], 1, 1, 1])
    contrasts = []
    for level in range(levels):
        ssim_per_channel, cs = _ssim(x, y, win=window, data_range=data_range, size_average=False)
        if level < levels - 1:
            contrasts.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    stacked = torch.stack(contrasts + [torch.relu(ssim_per_channel)], dim=0)  # (level, N, C)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean()


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Optional[float]:
    """Evaluation MS-SSIM (see :func:`multiscale_ssim`) after clamping ``x`` (the
    reconstruction) to [0, data_range]; None when the image is too small (≤ 10 px)."""
    if ms_ssim_levels(int(x.shape[-2]), int(x.shape[-1])) == 0:
        return None
    with torch.no_grad():
        return float(multiscale_ssim(x.float().clamp(0, data_range), y.float(), data_range))


# ------------------------------------------------------------------------- PSNR
def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> float:
    """PSNR in dB over all RGB channels: 10·log10(range² / MSE), ``x`` (the reconstruction)
    clamped to [0, data_range] first. For a batch, the mean of the per-image PSNRs (the
    usual way R-D tables average over a test set). Identical images give +inf."""
    if x.shape != y.shape:
        raise LossError(f"PSNR needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.detach().double().clamp(0, data_range)
    y = y.detach().double()
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    per_image = ((x - y) ** 2).flatten(1).mean(dim=1)
    values = [math.inf if float(m) == 0.0 else 10.0 * math.log10(data_range**2 / float(m)) for m in per_image]
    return sum(values) / len(values)


# ----------------------------------------------------------------- distortions
DistortionFn = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]
#: D from measured quality: ``{"mse": mean MSE on [0, 1], "ms_ssim": MS-SSIM or None} -> D``.
MeasuredFn = Callable[[Mapping[str, Optional[float]]], float]
DISTORTIONS: dict[str, DistortionFn] = {}
MEASURED: dict[str, MeasuredFn] = {}


def register_distortion(name: str, measured: MeasuredFn) -> Callable[[DistortionFn], DistortionFn]:
    """Register ``fn(x_hat, x) -> (D, extra metrics)``; the loss is λ·D + bpp. Duplicate = error.

    ``measured`` gives the same D from the quality values an evaluation measures, so training, evaluation
    and the LOF sweep score a reconstruction with one definition of the R-D loss (:func:`rd_loss_value`)."""

    def decorator(fn: DistortionFn) -> DistortionFn:
        if name in DISTORTIONS:
            raise LossError(f"distortion {name!r} is already registered")
        DISTORTIONS[name] = fn
        MEASURED[name] = measured
        return fn

    return decorator


def rd_loss_value(distortion: str, lmbda: float, bpp: float, *, mse: Optional[float],
                  ms_ssim: Optional[float] = None) -> float:
    """λ·D + bpp of measured values (NaN when the quality D needs was not measured)."""
    if distortion not in MEASURED:
        raise LossError(f"distortion must be one of {sorted(MEASURED)}, got {distortion!r}")
    value = MEASURED[distortion]({"mse": mse, "ms_ssim": ms_ssim})
    return lmbda * value + bpp


def _measured(key: str, transform: Callable[[float], float]) -> MeasuredFn:
    def measured(values: Mapping[str, Optional[float]]) -> float:
        value = values.get(key)
        return math.nan if value is None else transform(float(value))
    return measured


@register_distortion("mse", measured=_measured("mse", lambda mse: 255.0**2 * mse))
def _mse_distortion(x_hat: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    mse = F.mse_loss(x_hat, x)
    return 255.0**2 * mse, {"mse": mse}


@register_distortion("ms-ssim", measured=_measured("ms_ssim", lambda quality: 1.0 - quality))
def _ms_ssim_distortion(x_hat: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    quality = multiscale_ssim(x_hat, x, data_range=1.0)
    with torch.no_grad():
        mse = F.mse_loss(x_hat, x)
    return 1.0 - quality, {"mse": mse, "ms_ssim": quality}


class RateDistortionLoss(nn.Module):
    """``L = λ·D + bpp`` (CompressAI's ``RateDistortionLoss``; paper Section 5.1).

    ``__call__(out, target)`` takes the model's dict (``x_hat``, ``likelihoods``) and the
    input batch, and returns tensors:

    - ``loss`` and ``rd_loss``: the total R-D loss λ·D + bpp (the same tensor);
    - ``bpp``: the rate R;
    - ``distortion``: D, the term λ multiplies — 255²·MSE for ``mse``, 1 − MS-SSIM for
      ``ms-ssim`` — so ``loss == lmbda * distortion + bpp`` always;
    - ``mse``: the plain MSE on [0, 1] (always, for logging); ``ms_ssim`` with ``ms-ssim``.

    The reconstruction is not clamped (gradients stay alive at the range limits), as in
    CompressAI. The orthogonality loss is not included (the engine adds λ_orth·L_orth).
    """

    def __init__(self, distortion: str = "mse", lmbda: float = 0.0130) -> None:
        super().__init__()
        if distortion not in DISTORTIONS:
            raise LossError(f"distortion must be one of {sorted(DISTORTIONS)}, got {distortion!r}")
        if not (isinstance(lmbda, (int, float)) and math.isfinite(lmbda) and lmbda > 0):
            raise LossError(f"lmbda must be a finite number > 0, got {lmbda!r}")
        self.distortion = distortion
        self.lmbda = float(lmbda)
        self._distortion_fn = DISTORTIONS[distortion]

    def forward(self, out: Mapping[str, Any], target: Tensor) -> dict[str, Tensor]:
        n, _, height, width = target.shape
        rate = bpp(out["likelihoods"], n * height * width)
        distortion, extra = self._distortion_fn(out["x_hat"], target)
        loss = self.lmbda * distortion + rate
        return {"loss": loss, "rd_loss": loss, "bpp": rate, "distortion": distortion, **extra}

    def extra_repr(self) -> str:
        return f"distortion={self.distortion!r}, lmbda={self.lmbda}"


# ------------------------------------------------------------------- telemetry
def _channel_energy(y: Tensor) -> Tensor:
    """Σ y² per channel over batch and positions, float64: (N, C, ...) or (C, H, W)."""
    if y.dim() < 3:
        raise LossError(f"latent must be (N, C, H, W) or (C, H, W), got shape {tuple(y.shape)}")
    y = y.detach().double()
    if y.dim() == 3:
        y = y.unsqueeze(0)
    return (y**2).transpose(0, 1).flatten(1).sum(dim=1)


def top_channel_energy_share(y: Tensor, fraction: float = 0.1) -> float:
    """Share of the latent's energy Σy² held by its top ``fraction`` of channels (Figure 1a).

    Channels are ranked by their energy summed over the batch and all positions; the top
    ``ceil(fraction·C)`` (at least one) are kept, e.g. 20 of 192, 32 of 320. Returns a value
    in (0, 1]; 1 means all energy sits in those channels. NaN for an all-zero latent.
    """
    if not 0.0 < fraction <= 1.0:
        raise LossError(f"fraction must be in (0, 1], got {fraction}")
    energy = _channel_energy(y)
    total = float(energy.sum())
    if total == 0.0:
        return math.nan
    count = max(1, math.ceil(fraction * energy.numel() - 1e-9))
    return float(torch.topk(energy, count).values.sum()) / total


def branch_energy_share(y: Tensor, y_branch: Tensor) -> float:
    """The AuxT branch's share of the latent energy (Figure 6b), in [0, 1].

    With ``y = y_nonlinear + y_branch`` (``y`` the latent that is quantized, ``y_branch``
    AuxT's additive part of it)::

        share = ||y_branch||² / (||y_branch||² + ||y − y_branch||²)

    i.e. the branch's energy relative to the summed energies of the two branches, which
    is what Figure 6 compares; it is not ||y_branch||²/||y||² (that can exceed 1 when the
    branches cancel). NaN when both branches are all zero.
    """
    if y.shape != y_branch.shape:
        raise LossError(f"y and y_branch must have the same shape, got {tuple(y.shape)} and {tuple(y_branch.shape)}")
    y = y.detach().double()
    branch = y_branch.detach().double()
    branch_energy = float((branch**2).sum())
    rest_energy = float(((y - branch) ** 2).sum())
    total = branch_energy + rest_energy
    return math.nan if total == 0.0 else branch_energy / total
