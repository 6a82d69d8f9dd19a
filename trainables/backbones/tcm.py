"""TCM: mixed Transformer-CNN learned image compression (Liu, Sun, Katto, CVPR 2023).

Written from the paper and the structure of the authors' release (jmliu206/LIC_TCM):
``g_a`` / ``g_s`` alternate residual (down/up)sampling blocks with Transformer-CNN
mixture (TCM) blocks; the entropy model is a channel-wise autoregressive model over 5
slices with Swin-attention (SWAtten) in the mean/scale parameter networks and latent
residual prediction (LRP). TCM-small uses N = 64, TCM-large N = 128; M = 320.

Differences from the release, none of which changes the model at the sizes it supports:

* Window attention pads its input to a multiple of the window size and crops the result,
  so any input whose sides are multiples of 64 works (the release needs multiples of 128
  and mis-pads feature maps smaller than a window). On sizes the release supports nothing
  is padded and the computation is the same.
* Widths the release hard-codes for M = 320 (hyper-latent 192, parameter networks 224 and
  128, attention width 128) scale with M, and head widths are capped at the block width,
  so tiny test widths build; at M = 320 they are the release's values.
* Entropy coding is per image (one y string per batch item), so batches round-trip.

The channel-context entropy model (slices, LRP, coding) is shared with STF in
:mod:`trainables.backbones.channel_context`; the Swin blocks in :mod:`trainables.backbones.swin`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv3x3,
    subpel_conv3x3,
)
from compressai.models import CompressionModel
from torch import Tensor, nn

from trainables.backbones.channel_context import ChannelContextModel, param_net
from trainables.backbones.registry import register_backbone
from trainables.backbones.swin import SwinBlock

__all__ = ["TCM", "ConvTransBlock", "SWAtten"]


class ConvTransBlock(nn.Module):
    """TCM block: a 1x1 conv splits channels into a residual-CNN half and a Swin half."""

    def __init__(self, conv_dim: int, trans_dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        self.conv_dim, self.trans_dim = conv_dim, trans_dim
        self.trans_block = SwinBlock(trans_dim, min(head_dim, trans_dim), window_size, shifted)
        self.conv1_1 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1)
        self.conv1_2 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1)
        self.conv_block = ResidualBlock(conv_dim, conv_dim)

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = torch.split(self.conv1_1(x), (self.conv_dim, self.trans_dim), dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))


class SwinPair(nn.Module):
    """A W-MSA block followed by an SW-MSA block, on (B, C, H, W) maps."""

    def __init__(self, dim: int, head_dim: int, window_size: int) -> None:
        super().__init__()
        self.block_1 = SwinBlock(dim, head_dim, window_size, shifted=False)
        self.block_2 = SwinBlock(dim, head_dim, window_size, shifted=True)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        return self.block_2(self.block_1(x)).permute(0, 3, 1, 2)


class SWAtten(AttentionBlock):
    """Swin-based attention (TCM's entropy model): Cheng's attention with a Swin branch."""

    def __init__(self, dim: int, head_dim: int, window_size: int, inter_dim: int) -> None:
        super().__init__(N=inter_dim)
        self.non_local_block = SwinPair(inter_dim, min(head_dim, inter_dim), window_size)
        self.in_conv = nn.Conv2d(dim, inter_dim, 1)
        self.out_conv = nn.Conv2d(inter_dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(x)
        z = self.non_local_block(x)
        out = self.conv_a(x) * torch.sigmoid(self.conv_b(z)) + x
        return self.out_conv(out)


def _scaled(value: int, M: int) -> int:
    """A width the release fixes for M = 320, scaled to other M (unchanged at M = 320)."""
    return max(4, round(value * M / 320))


class TCM(ChannelContextModel):
    """Mixed Transformer-CNN LIC model; ``g_a`` / ``g_s`` layouts as in the release:

    g_a = [RBS(3,2N), TCM, TCM, RBS, TCM, TCM, RBS, TCM, TCM, conv3x3(2N,M,s2)]
    g_s = [RBU(M,2N), TCM, TCM, RBU, TCM, TCM, RBU, TCM, TCM, subpel(2N,3)]
    """

    def __init__(
        self,
        N: int = 64,
        M: int = 320,
        config: Sequence[int] = (2, 2, 2, 2, 2, 2),
        head_dim: Sequence[int] = (8, 16, 32, 32, 16, 8),
        window_size: int = 8,
        num_slices: int = 5,
        max_support_slices: int = 5,
    ) -> None:
        super().__init__()
        if M % num_slices:
            raise ValueError(f"M must be a multiple of num_slices={num_slices}, but got M={M}")
        self.N, self.M = N, M
        self.num_slices = num_slices
        self.max_support_slices = max_support_slices
        slice_ch = M // num_slices
        z_ch = _scaled(192, M)
        hidden = (_scaled(224, M), _scaled(128, M))
        atten_dim = _scaled(128, M)

        def tcm_blocks(n: int, hd: int, ws: int = window_size) -> list[nn.Module]:
            return [ConvTransBlock(N, N, hd, ws, shifted=bool(i % 2)) for i in range(n)]

        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, 2 * N, stride=2),
            *tcm_blocks(config[0], head_dim[0]), ResidualBlockWithStride(2 * N, 2 * N, stride=2),
            *tcm_blocks(config[1], head_dim[1]), ResidualBlockWithStride(2 * N, 2 * N, stride=2),
            *tcm_blocks(config[2], head_dim[2]), conv3x3(2 * N, M, stride=2),
        )
        self.g_s = nn.Sequential(
            ResidualBlockUpsample(M, 2 * N, 2),
            *tcm_blocks(config[3], head_dim[3]), ResidualBlockUpsample(2 * N, 2 * N, 2),
            *tcm_blocks(config[4], head_dim[4]), ResidualBlockUpsample(2 * N, 2 * N, 2),
            *tcm_blocks(config[5], head_dim[5]), subpel_conv3x3(2 * N, 3, 2),
        )
        self.h_a = nn.Sequential(
            ResidualBlockWithStride(M, 2 * N, 2),
            *tcm_blocks(config[0], 32, 4), conv3x3(2 * N, z_ch, stride=2),
        )
        self.h_mean_s = nn.Sequential(
            ResidualBlockUpsample(z_ch, 2 * N, 2), *tcm_blocks(config[3], 32, 4), subpel_conv3x3(2 * N, M, 2)
        )
        self.h_scale_s = nn.Sequential(
            ResidualBlockUpsample(z_ch, 2 * N, 2), *tcm_blocks(config[3], 32, 4), subpel_conv3x3(2 * N, M, 2)
        )
        support = [M + slice_ch * min(i, max_support_slices) for i in range(num_slices)]
        self.atten_mean = nn.ModuleList(SWAtten(c, 16, window_size, atten_dim) for c in support)
        self.atten_scale = nn.ModuleList(SWAtten(c, 16, window_size, atten_dim) for c in support)
        self.cc_mean_transforms = nn.ModuleList(param_net(c, hidden, slice_ch) for c in support)
        self.cc_scale_transforms = nn.ModuleList(param_net(c, hidden, slice_ch) for c in support)
        self.lrp_transforms = nn.ModuleList(
            param_net(M + slice_ch * min(i + 1, max_support_slices + 1), hidden, slice_ch)
            for i in range(num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(z_ch)
        self.gaussian_conditional = GaussianConditional(None)


def _tcm_plan(test_widths: tuple[int, int]) -> dict:
    # Stage positions as in the AuxT release (models/tcm_AuxT.py): WLS after each
    # down-sampling layer of g_a, iWLS before each up-sampling layer of g_s and at its output.
    return dict(
        M=320,
        widths=lambda N, M: (3, 2 * N, 2 * N, 2 * N, M),
        analysis_positions=(0, 3, 6, 9),
        synthesis_positions=(2, 5, 8, 9),
        down_layers=(0, 3, 6, 9),
        up_layers=(0, 3, 6, 9),
        pad_multiple=64,
        test_widths=test_widths,
        decode_steps=lambda model, height, width: model.num_slices,
    )


@register_backbone("tcm-small", N=64, **_tcm_plan((16, 40)))
def build_tcm_small(N: int, M: int) -> CompressionModel:
    """TCM-small, Liu et al. CVPR 2023 (N=64, M=320)."""
    return TCM(N=N, M=M)


@register_backbone("tcm-large", N=128, **_tcm_plan((32, 40)))
def build_tcm_large(N: int, M: int) -> CompressionModel:
    """TCM-large, Liu et al. CVPR 2023 (N=128, M=320)."""
    return TCM(N=N, M=M)

