"""STF, the SymmetricalTransFormer (Zou, Song, Zhang, CVPR 2022, "The Devil Is in the Details").

Written from the paper's description and the structure of the authors' release
(Googolxx/STF, ``compressai/models/stf.py``): a Swin-Transformer analysis (patch
embedding, four stages of window attention with patch merging between them) mirrored in
the synthesis (patch splitting, then a 5x5 conv + pixel shuffle + 3x3 conv), and the
channel-wise autoregressive entropy model with LRP over 12 slices (shared with TCM, see
:mod:`trainables.backbones.channel_context`). Defaults are the release's: embed dim 48,
patch size 2, depths [2, 2, 6, 2], heads [3, 6, 12, 24], window 4, stochastic depth 0.2.

The release's stages are ``BasicLayer`` s that run their resampling internally on token
sequences; here each stage and each resampling step is its own layer of an
``nn.Sequential`` over (B, C, H, W) maps, so AuxT attaches at declared positions:

    g_a = [PatchEmbed, Stage(N), Merge, Stage(2N), Merge, Stage(4N), Merge, Stage(8N)]
    g_s = [Stage(8N), Split, Stage(4N), Split, Stage(2N), Split, Stage(N), end_conv]

Differences from the release, none of which changes the model at its default widths:

* The latent width is ``M = 8 N`` (the last stage's width), as in the release; the
  hyper-networks' widths (384/336/288/240/192 and 224/176/128/64) and the slice width 32
  scale with M so that tiny test widths build; heads scale with N (head width 16).
* Shifted-window masks block with -inf rather than -100 (the same softmax in practice).
* Entropy coding is per image, so batches round-trip.
* Parameter names differ from the release's, so its checkpoints do not load as they are.
"""

from __future__ import annotations

from typing import Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import conv3x3, subpel_conv3x3
from compressai.models import CompressionModel
from torch import Tensor, nn

from trainables.backbones.channel_context import ChannelContextModel, param_net
from trainables.backbones.registry import BackboneError, register_backbone
from trainables.backbones.swin import SwinBlock

__all__ = ["STF", "SwinStage", "PatchEmbed", "PatchMerging", "PatchSplit"]


def _layer_norm_2d(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """``patch``x``patch`` stride-``patch`` conv to ``dim`` channels, then LayerNorm."""

    def __init__(self, patch_size: int, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return _layer_norm_2d(self.norm, self.proj(x))


class PatchMerging(nn.Module):
    """2x down-sampling: gather each 2x2 neighbourhood (4C), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # the release's order: (0,0), (1,0), (0,1), (1,1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x)).permute(0, 3, 1, 2)


class PatchSplit(nn.Module):
    """2x up-sampling: LayerNorm, linear C -> 2C, pixel shuffle to C/2 channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.reduction = nn.Linear(dim, 2 * dim, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduction(self.norm(x.permute(0, 2, 3, 1)))
        return self.shuffle(x.permute(0, 3, 1, 2))


class SwinStage(nn.Module):
    """``depth`` Swin blocks at one resolution, alternating W-MSA and SW-MSA."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_path: Sequence[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, dim // num_heads, window_size, shifted=bool(i % 2), drop_path=drop_path[i])
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


def _scaled(value: int, M: int) -> int:
    """A width the release fixes for M = 384, scaled to other M (unchanged at M = 384)."""
    return max(4, round(value * M / 384))


def stage_heads(num_heads: Sequence[int], N: int, embed_dim: int = 48) -> list[int]:
    """Heads per stage at embed dim N: the release's at N = 48, same head width otherwise."""
    heads = [max(1, h * N // embed_dim) for h in num_heads]
    for k, h in enumerate(heads):
        if (N * 2 ** k) % h:
            raise BackboneError(f"stf: N={N} gives stage {k} width {N * 2 ** k}, not a multiple of its {h} heads; "
                                "use N a multiple of 16 (or 48 for the release's heads)")
    return heads


class STF(ChannelContextModel):
    """Symmetrical Transformer LIC model (see the module docstring for the layouts)."""

    def __init__(
        self,
        N: int = 48,
        M: int = 384,
        patch_size: int = 2,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 4,
        num_slices: int = 12,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        stages = len(depths)
        if M != N * 2 ** (stages - 1):
            raise BackboneError(f"stf: M must be {2 ** (stages - 1)}·N (the last stage's width), "
                                f"but got N={N}, M={M}; set M={N * 2 ** (stages - 1)}")
        if M % num_slices:
            raise BackboneError(f"stf: M must be a multiple of num_slices={num_slices}, but got M={M}")
        self.N, self.M = N, M
        self.num_slices = num_slices
        self.max_support_slices = num_slices // 2
        self.atten_mean = None  # STF feeds the supports to the parameter nets directly
        self.atten_scale = None
        heads = stage_heads(num_heads, N)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule

        def rates(depth_list: Sequence[int], k: int) -> list[float]:
            return dpr[sum(depth_list[:k]): sum(depth_list[: k + 1])]

        analysis: list[nn.Module] = [PatchEmbed(patch_size, 3, N)]
        for k in range(stages):
            analysis.append(SwinStage(N * 2 ** k, depths[k], heads[k], window_size, rates(depths, k)))
            if k < stages - 1:
                analysis.append(PatchMerging(N * 2 ** k))
        self.g_a = nn.Sequential(*analysis)

        # The release slices the same rate list with the reversed depths.
        rev_depths, rev_heads = list(depths)[::-1], heads[::-1]
        synthesis: list[nn.Module] = []
        for k in range(stages):
            dim = N * 2 ** (stages - 1 - k)
            synthesis.append(SwinStage(dim, rev_depths[k], rev_heads[k], window_size, rates(rev_depths, k)))
            if k < stages - 1:
                synthesis.append(PatchSplit(dim))
        synthesis.append(nn.Sequential(
            nn.Conv2d(N, N * patch_size ** 2, kernel_size=5, padding=2),
            nn.PixelShuffle(patch_size),
            nn.Conv2d(N, 3, kernel_size=3, padding=1),
        ))
        self.g_s = nn.Sequential(*synthesis)

        h = [_scaled(c, M) for c in (384, 336, 288, 240, 192)]
        self.h_a = nn.Sequential(
            conv3x3(M, h[0]), nn.GELU(), conv3x3(h[0], h[1]), nn.GELU(), conv3x3(h[1], h[2], stride=2),
            nn.GELU(), conv3x3(h[2], h[3]), nn.GELU(), conv3x3(h[3], h[4], stride=2),
        )

        def h_s() -> nn.Sequential:
            return nn.Sequential(
                conv3x3(h[4], h[3]), nn.GELU(), subpel_conv3x3(h[3], h[2], 2), nn.GELU(),
                conv3x3(h[2], h[1]), nn.GELU(), subpel_conv3x3(h[1], M, 2), nn.GELU(), conv3x3(M, M),
            )

        self.h_mean_s = h_s()
        self.h_scale_s = h_s()
        slice_ch = M // num_slices
        hidden = [_scaled(c, M) for c in (224, 176, 128, 64)]
        support = [M + slice_ch * min(i, self.max_support_slices) for i in range(num_slices)]
        self.cc_mean_transforms = nn.ModuleList(param_net(c, hidden, slice_ch) for c in support)
        self.cc_scale_transforms = nn.ModuleList(param_net(c, hidden, slice_ch) for c in support)
        self.lrp_transforms = nn.ModuleList(
            param_net(M + slice_ch * min(i + 1, self.max_support_slices + 1), hidden, slice_ch)
            for i in range(num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(h[4])
        self.gaussian_conditional = GaussianConditional(None)


# AuxT (paper Section 4.2): WLS outputs added after the patch embedding and after each
# patch merging, the last one at y (after the final stage, so y = g_a(x) + WLS chain);
# iWLS mirrored: after each patch split and at the output of end_conv. The resampling
# layers for Appendix A.2 are the embedding / mergings and the splits / end_conv.
@register_backbone(
    "stf",
    N=48,
    M=384,
    widths=lambda N, M: (3, N, 2 * N, 4 * N, M),
    analysis_positions=(0, 2, 4, 7),
    synthesis_positions=(1, 3, 5, 7),
    down_layers=(0, 2, 4, 6),
    up_layers=(1, 3, 5, 7),
    pad_multiple=64,
    test_widths=(12, 96),
    decode_steps=lambda model, height, width: model.num_slices,
)
def build_stf(N: int, M: int) -> CompressionModel:
    """STF, Zou et al. CVPR 2022 (embed dim N=48, M=8N=384, window 4, 12 slices)."""
    return STF(N=N, M=M)
