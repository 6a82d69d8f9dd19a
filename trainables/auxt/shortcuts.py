"""Wavelet-based linear shortcuts: WLS (analysis) and iWLS (synthesis), paper Section 4.1.

WLS = DWT -> subband-aware scaling exp(s) -> orthogonal linear projection (OLP).
iWLS = OLP -> division by exp(s) -> inverse DWT.
Every ablation of Figure 8 and Appendix A.2 is one constructor argument that swaps exactly
one of these parts: ``constrained`` (A1), ``scaling`` (A2), ``downsample`` (A3 avgpool,
A4 strided conv; both also drop the scaling, as the paper does), ``nonlinearity``
(Figure 8d).

Speed: with the Haar basis (the paper's choice), DWT -> scaling -> OLP is one linear map
per 2x2 block, so it runs as a single dense 2x2 stride-2 convolution whose kernel is
computed from (W, s, b) on every call (iWLS: one 2x2 stride-2 transposed convolution).
The function and its gradients are those of the three-step form (``fuse = False`` runs
that form; tests compare both); the 4C-channel subband tensor is never materialised.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import Tensor, nn

from trainables.auxt.wavelets import DWT2d, IDWT2d, check_even_size

__all__ = ["OLP", "SubbandScaling", "WLS", "IWLS", "orthogonality_penalty"]

OrthoNorm = Literal["mean", "frobenius"]
Downsample = Literal["dwt", "avgpool", "strided_conv"]
Nonlinearity = Literal["none", "relu", "gdn"]


def orthogonality_penalty(weight: Tensor, norm: OrthoNorm = "mean") -> Tensor:
    """||G - I||² of the Gram matrix of a (out, in) projection, Appendix A.5.

    G is the Gram matrix of the smaller side (W Wᵀ when out <= in, else Wᵀ W), the one a
    (semi-)orthogonal W can make the identity; by Lemma A.1 the other side differs only by
    a constant, so the gradient is the same. ``mean`` averages the squared entries (the
    authors' ``F.mse_loss(gram, I)``, the scale λ_orth = 0.1 was tuned at); ``frobenius``
    sums them (Eq. 5 as written).
    """
    out_features, in_features = weight.shape
    gram = weight @ weight.t() if out_features <= in_features else weight.t() @ weight
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if norm == "mean":
        return F.mse_loss(gram, eye, reduction="mean")
    if norm == "frobenius":
        return (gram - eye).pow(2).sum()
    raise ValueError(f"norm must be 'mean' or 'frobenius', but got {norm!r}")


class OLP(nn.Module):
    """Orthogonal linear projection: a 1x1 convolution W (with bias, as the authors' code).

    ``constrained=False`` is ablation A1: same layer, no orthogonality penalty.
    """

    def __init__(self, in_channels: int, out_channels: int, constrained: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.constrained = constrained

    @property
    def matrix(self) -> Tensor:
        """W as an (out, in) matrix."""
        return self.proj.weight.flatten(1)

    def ortho_loss(self, norm: OrthoNorm = "mean") -> Tensor:
        if not self.constrained:
            return self.proj.weight.new_zeros(())
        return orthogonality_penalty(self.matrix, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class SubbandScaling(nn.Module):
    """Subband-aware scaling (Eq. 4): four learnable C-vectors s_ll, s_lh, s_hl, s_hh.

    Multiplies subband b of channel c by exp(s_b[c]) (``inverse=True`` divides, as iWLS).
    The parameter ``s`` has one row per subband in the order LL, LH, HL, HH.
    """

    def __init__(self, channels: int, init: Sequence[float], inverse: bool = False) -> None:
        super().__init__()
        if len(init) != 4:
            raise ValueError(f"scaling init needs 4 values (LL, LH, HL, HH), but got {tuple(init)}")
        self.s = nn.Parameter(torch.tensor([float(v) for v in init]).unsqueeze(1).repeat(1, channels))
        self.inverse = inverse

    def log_scale(self) -> Tensor:
        """Per-channel log-scale in the DWT's channel layout (4c + band), shape (1, 4C, 1, 1)."""
        return self.s.t().reshape(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        log_scale = self.log_scale()
        return x * torch.exp(-log_scale if self.inverse else log_scale)


def _nonlinearity(kind: Nonlinearity, channels: int, inverse: bool) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "relu":
        return nn.ReLU()
    if kind == "gdn":
        return GDN(channels, inverse=inverse)
    raise ValueError(f"nonlinearity must be one of none, relu, gdn, but got {kind!r}")


def _resampler(downsample: Downsample, channels: int, wavelet: str, *, inverse: bool) -> tuple[nn.Module, int]:
    """WLS's 2x downsampler (IWLS's upsampler when ``inverse``) and the channel count on the subband side.

    ``dwt`` is the paper's (I)DWT; A3 ``avgpool`` pairs with nearest upsampling (its adjoint), A4 a strided
    (transposed) convolution to 4x the channels."""
    if downsample == "dwt":
        return (IDWT2d(channels, wavelet) if inverse else DWT2d(channels, wavelet)), 4 * channels
    if downsample == "avgpool":
        return (nn.Upsample(scale_factor=2, mode="nearest") if inverse else nn.AvgPool2d(2)), channels
    if downsample == "strided_conv":
        conv = nn.ConvTranspose2d(4 * channels, channels, 2, stride=2) if inverse else nn.Conv2d(channels, 4 * channels,
                                                                                                    2, stride=2)
        return conv, 4 * channels
    raise ValueError(f"downsample must be one of dwt, avgpool, strided_conv, but got {downsample!r}")


class WLS(nn.Module):
    """Wavelet-based linear shortcut (Figure 5b): (B, C, H, W) -> (B, D, H/2, W/2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        wavelet: str = "haar",
        scaling_init: Sequence[float] = (1.0, 0.5, 0.5, 0.0),
        scaling: bool = True,
        constrained: bool = True,
        downsample: Downsample = "dwt",
        nonlinearity: Nonlinearity = "none",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.down, expanded = _resampler(downsample, in_channels, wavelet, inverse=False)
        # A2 removes the scaling; A3/A4 remove it too since there are no subbands to scale.
        use_scaling = scaling and downsample == "dwt"
        self.scaling: nn.Module = (
            SubbandScaling(in_channels, scaling_init) if use_scaling else nn.Identity()
        )
        self.olp = OLP(expanded, out_channels, constrained=constrained)
        self.act = _nonlinearity(nonlinearity, out_channels, inverse=False)
        self.fuse = isinstance(self.down, DWT2d) and self.down.length == 2

    def fused_kernel(self) -> Tensor:
        """(D, C, 2, 2) kernel of OLP ∘ scaling ∘ Haar DWT."""
        C, D = self.in_channels, self.out_channels
        weight = self.olp.proj.weight.reshape(D, C, 4)  # input channel 4c + band
        if isinstance(self.scaling, SubbandScaling):
            weight = weight * torch.exp(self.scaling.s.t()).unsqueeze(0)
        bands = self.down.kernel[:4, 0]  # (4, 2, 2), identical for every channel
        return torch.einsum("dcb,bij->dcij", weight, bands.to(weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        if self.fuse:
            check_even_size(x)
            return self.act(F.conv2d(x, self.fused_kernel(), self.olp.proj.bias, stride=2))
        return self.act(self.olp(self.scaling(self.down(x))))


class IWLS(nn.Module):
    """Inverse WLS (Figure 5c): (B, D, h, w) -> (B, C, 2h, 2w); OLP, divide by exp(s), IDWT."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        wavelet: str = "haar",
        scaling_init: Sequence[float] = (1.0, 0.5, 0.5, 0.0),
        scaling: bool = True,
        constrained: bool = True,
        downsample: Downsample = "dwt",
        nonlinearity: Nonlinearity = "none",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, expanded = _resampler(downsample, out_channels, wavelet, inverse=True)
        use_scaling = scaling and downsample == "dwt"
        self.olp = OLP(in_channels, expanded, constrained=constrained)
        self.act = _nonlinearity(nonlinearity, expanded, inverse=True)
        self.scaling: nn.Module = (
            SubbandScaling(out_channels, scaling_init, inverse=True) if use_scaling else nn.Identity()
        )
        self.fuse = isinstance(self.up, IDWT2d) and self.up.length == 2 and isinstance(self.act, nn.Identity)

    def fused_kernel_and_bias(self) -> tuple[Tensor, Tensor]:
        """(D, C, 2, 2) transposed-conv kernel and (C, 2, 2) bias pattern of IDWT ∘ scaling⁻¹ ∘ OLP."""
        C, D = self.out_channels, self.in_channels
        weight = self.olp.proj.weight.reshape(C, 4, D)  # output channel 4c + band
        bias = self.olp.proj.bias.reshape(C, 4)
        if isinstance(self.scaling, SubbandScaling):
            inverse_scale = torch.exp(-self.scaling.s.t())  # (C, 4)
            weight = weight * inverse_scale.unsqueeze(-1)
            bias = bias * inverse_scale
        bands = self.up.kernel[:4, 0].to(weight.dtype)  # (4, 2, 2)
        kernel = torch.einsum("cbd,bij->dcij", weight, bands)
        return kernel, torch.einsum("cb,bij->cij", bias, bands)

    def forward(self, x: Tensor) -> Tensor:
        if self.fuse:
            kernel, bias = self.fused_kernel_and_bias()
            out = F.conv_transpose2d(x, kernel, stride=2)
            # the OLP bias passes the IDWT as a 2x2 pattern tiled over the output
            return out + bias.repeat(1, x.shape[-2], x.shape[-1]).to(out.dtype)
        return self.up(self.scaling(self.act(self.olp(x))))
