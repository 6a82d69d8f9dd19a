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
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
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

from trainables.backbones.registry import register_backbone

__all__ = ["TCM", "ConvTransBlock", "SWAtten"]


def ste_round(x: Tensor) -> Tensor:
    """Rounding with a straight-through gradient."""
    return torch.round(x) - x.detach() + x


def _conv(in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=1, padding=kernel_size // 2)


class WindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with relative position bias (Swin)."""

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width must be a multiple of head_dim={head_dim}, but got {dim}")
        self.head_dim = head_dim
        self.n_heads = dim // head_dim
        self.scale = head_dim ** -0.5
        self.window_size = window_size
        self.shifted = shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        self.linear = nn.Linear(dim, dim)
        table = torch.zeros(self.n_heads, 2 * window_size - 1, 2 * window_size - 1)
        nn.init.trunc_normal_(table, std=0.02)
        self.relative_position_params = nn.Parameter(table)
        coords = torch.stack(torch.meshgrid(
            torch.arange(window_size), torch.arange(window_size), indexing="ij"
        ), dim=-1).reshape(-1, 2)
        relation = coords[:, None, :] - coords[None, :, :] + window_size - 1
        self.register_buffer("relation", relation, persistent=False)

    def relative_embedding(self) -> Tensor:
        """(heads, p, p) bias for the p = window² positions of a window."""
        return self.relative_position_params[:, self.relation[..., 0], self.relation[..., 1]]

    def _mask(self, h_windows: int, w_windows: int, device: torch.device) -> Tensor:
        """Mask of the shifted windows that wrap around the border (True = blocked)."""
        p, s = self.window_size, self.window_size - self.window_size // 2
        mask = torch.zeros(h_windows, w_windows, p, p, p, p, dtype=torch.bool, device=device)
        mask[-1, :, :s, :, s:, :] = True
        mask[-1, :, s:, :, :s, :] = True
        mask[:, -1, :, :s, :, s:] = True
        mask[:, -1, :, s:, :, :s] = True
        return mask.reshape(h_windows * w_windows, p * p, p * p)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) channels-last."""
        b, height, width, c = x.shape
        p = self.window_size
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = height + pad_h, width + pad_w
        if self.shifted:
            x = torch.roll(x, shifts=(-(p // 2), -(p // 2)), dims=(1, 2))
        hw, ww = hp // p, wp // p
        windows = x.reshape(b, hw, p, ww, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hw * ww, p * p, c)
        qkv = self.embedding_layer(windows)  # (b, nw, np, 3·heads·head_dim)
        qkv = qkv.reshape(b, hw * ww, p * p, 3 * self.n_heads, self.head_dim).permute(3, 0, 1, 2, 4)
        q, k, v = qkv.chunk(3, dim=0)  # each (heads, b, nw, np, head_dim)
        sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.scale
        sim = sim + self.relative_embedding()[:, None, None]
        if self.shifted:
            sim = sim.masked_fill(self._mask(hw, ww, x.device), float("-inf"))
        probs = sim.softmax(dim=-1)
        out = torch.einsum("hbwij,hbwjc->hbwic", probs, v)
        out = out.permute(1, 2, 3, 0, 4).reshape(b, hw * ww, p * p, c)
        out = self.linear(out)
        out = out.reshape(b, hw, ww, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shifted:
            out = torch.roll(out, shifts=(p // 2, p // 2), dims=(1, 2))
        if pad_h or pad_w:
            out = out[:, :height, :width]
        return out


class SwinBlock(nn.Module):
    """Pre-norm Transformer block: window attention then a 4x MLP, both residual."""

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window_size, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.msa(self.ln1(x))
        return x + self.mlp(self.ln2(x))


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


def _param_net(in_ch: int, hidden: Sequence[int], out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        _conv(in_ch, hidden[0]), nn.GELU(), _conv(hidden[0], hidden[1]), nn.GELU(), _conv(hidden[1], out_ch)
    )


def _scaled(value: int, M: int) -> int:
    """A width the release fixes for M = 320, scaled to other M (unchanged at M = 320)."""
    return max(4, round(value * M / 320))


class TCM(CompressionModel):
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
        self.cc_mean_transforms = nn.ModuleList(_param_net(c, hidden, slice_ch) for c in support)
        self.cc_scale_transforms = nn.ModuleList(_param_net(c, hidden, slice_ch) for c in support)
        self.lrp_transforms = nn.ModuleList(
            _param_net(M + slice_ch * min(i + 1, max_support_slices + 1), hidden, slice_ch)
            for i in range(num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(z_ch)
        self.gaussian_conditional = GaussianConditional(None)

    # -- shared per-slice computation --------------------------------------------------
    def _slice_params(self, index: int, latent_means: Tensor, latent_scales: Tensor,
                      support: list[Tensor], y_shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, scale, mean_support) of slice ``index`` from the hyperprior and decoded slices."""
        if self.max_support_slices >= 0:
            support = support[: self.max_support_slices]
        mean_support = self.atten_mean[index](torch.cat([latent_means, *support], dim=1))
        mu = self.cc_mean_transforms[index](mean_support)[:, :, : y_shape[0], : y_shape[1]]
        scale_support = self.atten_scale[index](torch.cat([latent_scales, *support], dim=1))
        scale = self.cc_scale_transforms[index](scale_support)[:, :, : y_shape[0], : y_shape[1]]
        return mu, scale, mean_support

    def _lrp(self, index: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        """Latent residual prediction added to a decoded slice."""
        lrp = self.lrp_transforms[index](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    def forward(self, x: Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        y_shape = (y.shape[2], y.shape[3])
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = ste_round(z - z_offset) + z_offset
        latent_scales = self.h_scale_s(z_hat)
        latent_means = self.h_mean_s(z_hat)

        y_hat_slices: list[Tensor] = []
        y_likelihoods = []
        for index, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            mu, scale, mean_support = self._slice_params(index, latent_means, latent_scales, y_hat_slices, y_shape)
            _, likelihood = self.gaussian_conditional(y_slice, scale, mu)
            y_likelihoods.append(likelihood)
            y_hat_slice = ste_round(y_slice - mu) + mu
            y_hat_slices.append(self._lrp(index, mean_support, y_hat_slice))
        x_hat = self.g_s(torch.cat(y_hat_slices, dim=1))
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": torch.cat(y_likelihoods, dim=1), "z": z_likelihoods},
        }

    def compress(self, x: Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        y_shape = (y.shape[2], y.shape[3])
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        latent_scales = self.h_scale_s(z_hat)
        latent_means = self.h_mean_s(z_hat)

        cdf = self.gaussian_conditional.quantized_cdf.tolist()
        cdf_lengths = self.gaussian_conditional.cdf_length.reshape(-1).int().tolist()
        offsets = self.gaussian_conditional.offset.reshape(-1).int().tolist()
        batch = x.shape[0]
        symbols: list[list[int]] = [[] for _ in range(batch)]
        indexes: list[list[int]] = [[] for _ in range(batch)]
        y_hat_slices: list[Tensor] = []
        for index, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            mu, scale, mean_support = self._slice_params(index, latent_means, latent_scales, y_hat_slices, y_shape)
            idx = self.gaussian_conditional.build_indexes(scale)
            y_q = self.gaussian_conditional.quantize(y_slice, "symbols", mu)
            for b in range(batch):
                symbols[b].extend(y_q[b].reshape(-1).tolist())
                indexes[b].extend(idx[b].reshape(-1).tolist())
            y_hat_slices.append(self._lrp(index, mean_support, y_q + mu))

        y_strings = []
        for b in range(batch):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols[b], indexes[b], cdf, cdf_lengths, offsets)
            y_strings.append(encoder.flush())
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings: list, shape: Any) -> dict[str, Tensor]:
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        latent_scales = self.h_scale_s(z_hat)
        latent_means = self.h_mean_s(z_hat)
        y_shape = (z_hat.shape[2] * 4, z_hat.shape[3] * 4)

        cdf = self.gaussian_conditional.quantized_cdf.tolist()
        cdf_lengths = self.gaussian_conditional.cdf_length.reshape(-1).int().tolist()
        offsets = self.gaussian_conditional.offset.reshape(-1).int().tolist()
        decoders = []
        for y_string in strings[0]:
            decoder = RansDecoder()
            decoder.set_stream(y_string)
            decoders.append(decoder)

        y_hat_slices: list[Tensor] = []
        for index in range(self.num_slices):
            mu, scale, mean_support = self._slice_params(index, latent_means, latent_scales, y_hat_slices, y_shape)
            idx = self.gaussian_conditional.build_indexes(scale)
            values = [
                torch.tensor(decoder.decode_stream(idx[b].reshape(-1).tolist(), cdf, cdf_lengths, offsets),
                             dtype=mu.dtype, device=mu.device).reshape(mu.shape[1:])
                for b, decoder in enumerate(decoders)
            ]
            y_hat_slice = self.gaussian_conditional.dequantize(torch.stack(values), mu)
            y_hat_slices.append(self._lrp(index, mean_support, y_hat_slice))
        x_hat = self.g_s(torch.cat(y_hat_slices, dim=1)).clamp_(0, 1)
        return {"x_hat": x_hat}


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
    )


@register_backbone("tcm-small", N=64, **_tcm_plan((16, 40)))
def build_tcm_small(N: int, M: int) -> CompressionModel:
    """TCM-small, Liu et al. CVPR 2023 (N=64, M=320)."""
    return TCM(N=N, M=M)


@register_backbone("tcm-large", N=128, **_tcm_plan((32, 40)))
def build_tcm_large(N: int, M: int) -> CompressionModel:
    """TCM-large, Liu et al. CVPR 2023 (N=128, M=320)."""
    return TCM(N=N, M=M)

