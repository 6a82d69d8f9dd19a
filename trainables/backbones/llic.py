"""LLIC-style backbone: large self-conditioned depth-wise kernels in g_a / g_s, ELIC's entropy model.

A **reconstruction**, not the paper's code: LLIC (Jiang et al., IEEE TMM 2024, arXiv 2304.09571)
has no public implementation and its method section could not be read here. The structure comes from the abstract, the captions of
Figures 2 and 3 and a third-party reading of the PDF (notes tag [E], unverified); everything
inside the blocks is assumed. The point is the design space the paper opens (kernel size,
self-conditioned vs static kernels, channel factors), as searchable knobs (``model.llic``).

From the paper (abstract, Fig. 2/3 captions):

* g_a -> Q -> entropy model -> g_s with N = 192, M = 320; mean-shifted quantisation.
* Basic block = STB (Spatial Transform Block: a large depth-wise kernel K = 11 or 9 whose
  weights are generated from the block's own input, SCST) and CTB (Channel Transform Block:
  channel mixing with self-conditioned per-channel importance factors, SCCT), with a DepthRB
  (depth-wise residual block, the non-linear embedding) and a Gate block.
* LLIC-ELIC keeps ELIC's entropy model and replaces only g_a / g_s: here CompressAI's
  ``Elic2022Chandelier`` (as the ``elic`` backbone) with its transforms swapped.

From the third-party reading [E], unverified:

* Kernel sizes per analysis stage 11, 11, 9, 9 (mirrored in the synthesis: 9, 9, 11, 11).
* Blocks per stage: analysis [1, 1, 3, 1], synthesis [1, 3, 1, 1] (latent side first); the
  synthesis block order is CTB -> STB.
* DepthRB = 1x1 conv -> 3x3 depth-wise conv -> 1x1 conv with a residual; Gate = 1x1
  expansion, split in two halves, element-wise product, 1x1 projection, residual (the FFN).
* SCST from pooled input features; SCCT a per-channel scaling vector from pooled features.

Assumed here (NOT in any source; each is a choice a faithful build may change):

1. Stage layout: each analysis stage is a 5x5 stride-2 convolution (as in ELIC) followed by
   its blocks at the new resolution, so the last analysis stage runs one block at M channels
   and y is a block's output; the synthesis mirrors it (blocks, then a 5x5 stride-2
   transposed convolution), the first synthesis stage at M channels. Stage widths are
   (3, N, N, N, M). No normalisation layers (SLIC, the precursor, found LayerNorm a poor fit).
2. Activation GELU everywhere; DepthRB keeps the width (C -> C -> C).
3. STB(x) = x + P(LK(DepthRB(x))): DepthRB, then the large depth-wise convolution LK, then a
   1x1 projection P, residual around all of it.
4. SCST: the kernel of LK for sample b is ``W ⊙ (1 + tanh(G(pool(x_b))))``: a learned static
   kernel W (C x K x K) modulated tap by tap by a factor in (0, 2) generated from the block's
   own input: adaptive average pooling of the DepthRB output to K x K, then G = a 1x1
   convolution (channel mixing), GELU, a 3x3 depth-wise convolution. The modulation keeps
   the kernel within twice the static one, so the block stays linear in the size of its
   input: an additive offset (W + G) is quadratic in it, and a bounded additive offset
   (W + tanh(G)) lets the taps jump far above W; with no normalisation layer both made the
   block stack overflow in the first training steps. G's last layer starts small (std 0.02),
   so training starts at the static kernel. ``kernel: static`` drops ΔW (a plain depth-wise convolution).
   Per-sample kernels run as ONE grouped convolution (batch folded into channels, groups =
   B·C; no unfold, which costs K² times the memory).
5. CTB(x) = x + s(x) ⊙ Gate(x), Gate(x) = P2(a ⊙ sigmoid(b)), (a, b) = split(P1(x)) with P1:
   C -> 4C (hidden width 2C, expansion ratio 2); a sigmoid gate (GLU) rather than GELU's
   (GEGLU), which is quadratic in the input and, without normalisation, diverged; SCCT factors
   s(x) = 2·sigmoid(MLP(avgpool(x)))
   with MLP C -> C/4 -> C (GELU), so s starts near 1. ``channel_factors: false`` drops s.
6. ELIC entropy model at M = 320 with ELIC's groups [16, 16, 32, 64, 192] (scaled for other M,
   as the ``elic`` backbone); LLIC's own per-variant entropy settings are not known.
7. Static kernels start as small random depth-wise weights (std 0.02), 1x1 projections P
   with PyTorch's default init.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from compressai.models.utils import conv, deconv
from compressai.models import CompressionModel, Elic2022Chandelier
from torch import Tensor, nn

from trainables.backbones.elic import channel_groups
from trainables.backbones.registry import register_backbone
from trainables.config import LLICConfig

__all__ = ["LargeKernelConv", "DepthRB", "Gate", "ChannelFactors", "STB", "CTB", "LLICBlock", "LLICStyleELIC"]

# [E]: blocks per stage (analysis image side first, synthesis latent side first).
ANALYSIS_BLOCKS = (1, 1, 3, 1)
SYNTHESIS_BLOCKS = (1, 3, 1, 1)


class LargeKernelConv(nn.Module):
    """Depth-wise K x K convolution, static or with self-conditioned per-sample weights (SCST)."""

    def __init__(self, channels: int, kernel_size: int, self_conditioned: bool) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"large-kernel size must be odd and positive, but got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel_size, kernel_size) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.generator: nn.Module | None = None
        if self_conditioned:
            last = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
            nn.init.trunc_normal_(last.weight, std=0.02)
            nn.init.zeros_(last.bias)
            self.generator = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), last)

    def kernels(self, x: Tensor) -> Tensor:
        """(B, C, K, K) per-sample kernels: the static kernel modulated tap by tap, W ⊙ (1 + tanh(G))."""
        modulation = torch.tanh(self.generator(F.adaptive_avg_pool2d(x, self.kernel_size)))
        return self.weight.squeeze(1).unsqueeze(0) * (1.0 + modulation)

    def forward(self, x: Tensor) -> Tensor:
        pad = self.kernel_size // 2
        if self.generator is None:
            return F.conv2d(x, self.weight, self.bias, padding=pad, groups=self.channels)
        batch, channels, height, width = x.shape
        weight = self.kernels(x).reshape(batch * channels, 1, self.kernel_size, self.kernel_size)
        out = F.conv2d(x.reshape(1, batch * channels, height, width), weight, self.bias.repeat(batch),
                       padding=pad, groups=batch * channels)
        return out.reshape(batch, channels, height, width)


class DepthRB(nn.Module):
    """Depth-wise residual block, the non-linear embedding: x + 1x1(GELU(dw3x3(GELU(1x1(x)))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.GELU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Gate(nn.Module):
    """Gated channel mixing (the FFN replacement): P2(a * sigmoid(b)), (a, b) = split(P1(x))."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = expansion * channels
        self.expand = nn.Conv2d(channels, 2 * hidden, 1)
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.expand(x).chunk(2, dim=1)
        return self.project(a * torch.sigmoid(b))


class ChannelFactors(nn.Module):
    """SCCT: per-sample channel importance factors 2·sigmoid(MLP(avgpool(x))), about 1 at start."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)))


class STB(nn.Module):
    """Spatial Transform Block: x + P(LK(DepthRB(x))) (assumption 3)."""

    def __init__(self, channels: int, kernel_size: int, self_conditioned: bool) -> None:
        super().__init__()
        self.embed = DepthRB(channels)
        self.large_kernel = LargeKernelConv(channels, kernel_size, self_conditioned)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.large_kernel(self.embed(x)))


class CTB(nn.Module):
    """Channel Transform Block: x + s(x) * Gate(x), s the SCCT factors (assumption 5)."""

    def __init__(self, channels: int, channel_factors: bool) -> None:
        super().__init__()
        self.gate = Gate(channels)
        self.factors = ChannelFactors(channels) if channel_factors else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.gate(x)
        if self.factors is not None:
            out = out * self.factors(x)
        return x + out


class LLICBlock(nn.Sequential):
    """STB -> CTB in the analysis, CTB -> STB in the synthesis ([E])."""

    def __init__(self, channels: int, kernel_size: int, options: LLICConfig, synthesis: bool) -> None:
        stb = STB(channels, kernel_size, options.kernel == "self-conditioned")
        ctb = CTB(channels, options.channel_factors)
        super().__init__(*((ctb, stb) if synthesis else (stb, ctb)))


def _stage(channels: int, count: int, kernel_size: int, options: LLICConfig, synthesis: bool) -> nn.Sequential:
    return nn.Sequential(*(LLICBlock(channels, kernel_size, options, synthesis) for _ in range(count)))


def llic_transforms(N: int, M: int, options: LLICConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """(g_a, g_s) of assumption 1; kernel sizes per analysis stage, mirrored in the synthesis.

    g_a = [down(3,N), blocks, down(N,N), blocks, down(N,N), blocks, down(N,M), blocks(M)]
    g_s = [blocks(M), up(M,N), blocks, up(N,N), blocks, up(N,N), blocks, up(N,3)]
    """
    widths = (3, N, N, N, M)
    kernels: Sequence[int] = options.kernel_sizes
    analysis: list[nn.Module] = []
    for k in range(4):
        analysis.append(conv(widths[k], widths[k + 1], kernel_size=5, stride=2))
        analysis.append(_stage(widths[k + 1], ANALYSIS_BLOCKS[k], kernels[k], options, synthesis=False))
    synthesis: list[nn.Module] = []
    for j, k in enumerate(range(3, -1, -1)):
        synthesis.append(_stage(widths[k + 1], SYNTHESIS_BLOCKS[j], kernels[k], options, synthesis=True))
        synthesis.append(deconv(widths[k + 1], widths[k], kernel_size=5, stride=2))
    return nn.Sequential(*analysis), nn.Sequential(*synthesis)


class LLICStyleELIC(Elic2022Chandelier):
    """ELIC's entropy model (CompressAI Elic2022Chandelier) under LLIC-style transforms."""

    def __init__(self, N: int = 192, M: int = 320, options: LLICConfig | None = None) -> None:
        super().__init__(N=N, M=M, groups=channel_groups(M))
        self.options = options or LLICConfig()
        self.g_a, self.g_s = llic_transforms(N, M, self.options)


# WLS after each down-sampling conv (the last one on g_a's output, the latent y after its
# block); iWLS after each up-sampling transposed conv, the last one on g_s's output.
@register_backbone(
    "llic-style",
    N=192,
    M=320,
    widths=lambda N, M: (3, N, N, N, M),
    analysis_positions=(0, 2, 4, 7),
    synthesis_positions=(1, 3, 5, 7),
    down_layers=(0, 2, 4, 6),
    up_layers=(1, 3, 5, 7),
    pad_multiple=64,
    test_widths=(8, 40),
    options="llic",
    decode_steps=lambda model, height, width: 2 * len(model.groups),
)
def build_llic_style(N: int, M: int, options: LLICConfig) -> CompressionModel:
    """LLIC-style (reconstruction): large self-conditioned kernels (Jiang et al. 2024) + ELIC's entropy model."""
    return LLICStyleELIC(N=N, M=M, options=options)
