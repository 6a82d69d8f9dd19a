"""Channel-wise autoregressive entropy model with latent residual prediction (Minnen & Singh, ICIP 2020).

TCM and STF share it: y is cut into ``num_slices`` channel slices; slice i's Gaussian mean
and scale come from the hyperprior (``h_mean_s`` / ``h_scale_s`` of ẑ) and the first
``min(i, max_support_slices)`` decoded slices; LRP adds ``0.5 tanh(·)`` of a predicted
residual to each decoded slice. TCM passes each support through a Swin attention block
(``atten_mean`` / ``atten_scale``), STF uses it as is (those attributes are None).

Subclasses build ``g_a``, ``g_s``, ``h_a``, ``h_mean_s``, ``h_scale_s``, the three
per-slice ``ModuleList`` s, ``entropy_bottleneck`` and ``gaussian_conditional``; this class
owns ``forward`` / ``compress`` / ``decompress``. Entropy coding is per image (one y string
per batch item), so batches round-trip. ``decompress`` takes y's size as 4x ẑ's (two
stride-2 layers in ``h_a``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.models import CompressionModel
from torch import Tensor, nn

__all__ = ["ChannelContextModel", "ste_round", "param_net", "conv"]


def ste_round(x: Tensor) -> Tensor:
    """Rounding with a straight-through gradient; the value is exactly ``round(x)`` (as decoded)."""
    return torch.round(x).detach() + (x - x.detach())


def conv(in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Conv2d:
    """Stride-1 'same' convolution."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=1, padding=kernel_size // 2)


def param_net(in_ch: int, hidden: Sequence[int], out_ch: int) -> nn.Sequential:
    """conv3x3 stack with GELU between layers: ``in_ch -> hidden... -> out_ch``."""
    widths = [in_ch, *hidden, out_ch]
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.GELU())
        layers.append(conv(widths[i], widths[i + 1]))
    return nn.Sequential(*layers)


def _apply(transforms: Optional[nn.ModuleList], index: int, x: Tensor) -> Tensor:
    return x if transforms is None else transforms[index](x)


class ChannelContextModel(CompressionModel):
    """Slice-wise channel context + LRP over a subclass's transforms (see the module docstring)."""

    num_slices: int
    max_support_slices: int
    atten_mean: Optional[nn.ModuleList]  # no class default: nn.Module keeps submodules in _modules
    atten_scale: Optional[nn.ModuleList]

    def _slice_params(self, index: int, latent_means: Tensor, latent_scales: Tensor,
                      support: list[Tensor], y_shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, scale, mean_support) of slice ``index`` from the hyperprior and decoded slices."""
        if self.max_support_slices >= 0:
            support = support[: self.max_support_slices]
        mean_support = _apply(self.atten_mean, index, torch.cat([latent_means, *support], dim=1))
        mu = self.cc_mean_transforms[index](mean_support)[:, :, : y_shape[0], : y_shape[1]]
        scale_support = _apply(self.atten_scale, index, torch.cat([latent_scales, *support], dim=1))
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
