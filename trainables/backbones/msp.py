"""MSP-style progressive entropy model: ŷ coded in a fixed number of spatial sub-lattice steps.

A **reconstruction of the idea**, not the paper's model: the multi-scale progressive (MSP)
probability model of Zhang et al. (Nokia, arXiv 2210.04112) has no public code and only its
abstract could be read. What the abstract states:
predefined *profiles* trade compression efficiency against complexity, and decoding
complexity drops from O(n) to O(1) against serial context models (over 20x faster on 2K
images). How MSP splits the latent, what each step conditions on, its distribution family
and whether it has a hyperprior are all NOT FOUND. This module builds the design the issue
asks for, so profiles can be searched and timed; every choice below is an assumption.

Assumed here:

1. Transforms: mbt2018-mean's (CompressAI ``MeanScaleHyperprior``: four 5x5 stride-2 conv +
   GDN layers each way, hyperprior h_a / h_s with z at 1/64), Gaussian conditional with
   mean-shifted quantisation (y - μ rounded, μ added back), as every backbone here.
2. Groups (space-to-depth, coarse to fine): positions of ŷ are ranked within a periodic 4x4
   tile, coarsest lattice first: rank = Σ_l r_l · 4^(L-1-l), where r_l ∈ {0, 1, 2, 3} is the
   2x2 phase ((0,0), (1,1), (0,1), (1,0)) of the position's bits at level l (finest level most
   significant). The 16 ranks are cut into ``steps`` equal consecutive groups. So ``steps: 2``
   is the checkerboard (half the positions, then the other half; He et al. 2021), ``4`` the four stride-2
   phases (coarse lattice, its diagonal, then the two remaining phases), ``8`` and ``16``
   refine the coarse lattice further, ``1`` is mbt2018-mean's parallel hyperprior decoding.
   The number of sequential decoding steps is ``steps`` for every image size (the O(1) of
   the abstract, read as sequential steps).
3. Each group's Gaussian mean and scale come from the hyperprior and every group decoded
   before it: one shared context network (a 5x5 convolution over ŷ with undecoded positions
   zeroed, plus the 0/1 map of decoded positions as an extra channel, M + 1 -> 2M) and
   mbt2018's entropy-parameter network (1x1 convolutions 4M -> 10M/3 -> 8M/3 -> 2M, LeakyReLU)
   on [hyperprior features, context]. Sharing them keeps the parameter count the same for
   every profile: profiles differ only in the decoding schedule. (With a 5x5 context the
   widths equal CompressAI's ``mbt2018`` serial model, the benchmark's comparison.)
4. Training computes the steps in order with the same masks as decoding (``steps`` passes of
   the context and parameter networks), rounding ŷ with a straight-through estimator, so the
   forward reconstruction is exactly what ``decompress`` returns.
5. One rANS stream per image holds every step's symbols in order.
"""

from __future__ import annotations

from typing import Any

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.models import CompressionModel, MeanScaleHyperprior
from torch import Tensor, nn

from trainables.backbones.channel_context import ste_round
from trainables.backbones.mbt2018 import MBT2018_LAYOUT
from trainables.backbones.registry import register_backbone
from trainables.config import MSPConfig

__all__ = ["MSPStyle", "group_map", "TILE"]

TILE = 4  # side of the periodic tile whose 16 positions are ranked coarse to fine
_PHASE_RANK = {(0, 0): 0, (1, 1): 1, (0, 1): 2, (1, 0): 3}


def _rank(i: int, j: int) -> int:
    levels = TILE.bit_length() - 1
    rank = 0
    for level in range(levels):
        phase = _PHASE_RANK[((i >> level) & 1, (j >> level) & 1)]
        rank += phase * 4 ** (levels - 1 - level)
    return rank


def group_map(steps: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(height, width) long tensor: the decoding step (0 .. steps-1) of each latent position."""
    if steps < 1 or (TILE * TILE) % steps:
        raise ValueError(f"steps must divide {TILE * TILE}, but got {steps}")
    tile = torch.tensor([[_rank(i, j) * steps // (TILE * TILE) for j in range(TILE)] for i in range(TILE)])
    reps = (-(-height // TILE), -(-width // TILE))
    return tile.repeat(*reps)[:height, :width].to(device)


class MSPStyle(MeanScaleHyperprior):
    """mbt2018-mean transforms with a ``steps``-step sub-lattice context (see the module docstring)."""

    def __init__(self, N: int = 192, M: int = 320, steps: int = 4) -> None:
        super().__init__(N=N, M=M)
        group_map(steps, 1, 1)  # validates steps
        self.steps = steps
        self.context_prediction = nn.Conv2d(M + 1, 2 * M, kernel_size=5, padding=2)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(M * 12 // 3, M * 10 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, M * 6 // 3, 1),
        )

    def decode_steps(self) -> int:
        """Sequential entropy-decoding steps of ŷ: ``steps``, whatever the image size."""
        return self.steps

    def _params(self, hyper: Tensor, y_hat: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) everywhere, from the hyperprior and the decoded positions ``known``."""
        mask = known.to(y_hat.dtype).expand(y_hat.shape[0], 1, *known.shape)
        context = self.context_prediction(torch.cat([y_hat * mask, mask], dim=1))
        scales, means = self.entropy_parameters(torch.cat([hyper, context], dim=1)).chunk(2, 1)
        return scales, means

    def forward(self, x: Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = ste_round(z - z_offset) + z_offset
        hyper = self.h_s(z_hat)
        groups = group_map(self.steps, y.shape[2], y.shape[3], y.device)
        y_hat = torch.zeros_like(y)
        scales_all = torch.zeros_like(y)
        means_all = torch.zeros_like(y)
        for step in range(self.steps):
            scales, means = self._params(hyper, y_hat, groups < step)
            here = (groups == step).to(y.dtype)
            scales_all = scales_all + scales * here
            means_all = means_all + means * here
            y_hat = y_hat + (ste_round(y - means) + means) * here
        _, y_likelihoods = self.gaussian_conditional(y, scales_all, means=means_all)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _tables(self) -> tuple[list, list, list]:
        gc = self.gaussian_conditional
        return (gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(),
                gc.offset.reshape(-1).int().tolist())

    def compress(self, x: Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        hyper = self.h_s(z_hat)
        groups = group_map(self.steps, y.shape[2], y.shape[3], y.device)
        cdf, lengths, offsets = self._tables()
        batch = y.shape[0]
        symbols: list[list[int]] = [[] for _ in range(batch)]
        indexes: list[list[int]] = [[] for _ in range(batch)]
        y_hat = torch.zeros_like(y)
        for step in range(self.steps):
            scales, means = self._params(hyper, y_hat, groups < step)
            here = groups == step
            y_q = self.gaussian_conditional.quantize(y, "symbols", means)
            idx = self.gaussian_conditional.build_indexes(scales)
            for b in range(batch):
                symbols[b].extend(y_q[b][:, here].reshape(-1).tolist())
                indexes[b].extend(idx[b][:, here].reshape(-1).tolist())
            y_hat = torch.where(here, y_q + means, y_hat)
        strings = []
        for b in range(batch):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols[b], indexes[b], cdf, lengths, offsets)
            strings.append(encoder.flush())
        return {"strings": [strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings: list, shape: Any) -> dict[str, Tensor]:
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        hyper = self.h_s(z_hat)
        height, width = z_hat.shape[2] * 4, z_hat.shape[3] * 4
        groups = group_map(self.steps, height, width, z_hat.device)
        cdf, lengths, offsets = self._tables()
        decoders = []
        for string in strings[0]:
            decoder = RansDecoder()
            decoder.set_stream(string)
            decoders.append(decoder)
        y_hat = torch.zeros(z_hat.shape[0], self.M, height, width, dtype=z_hat.dtype, device=z_hat.device)
        for step in range(self.steps):
            scales, means = self._params(hyper, y_hat, groups < step)
            here = groups == step
            idx = self.gaussian_conditional.build_indexes(scales)
            for b, decoder in enumerate(decoders):
                values = decoder.decode_stream(idx[b][:, here].reshape(-1).tolist(), cdf, lengths, offsets)
                decoded = torch.tensor(values, dtype=y_hat.dtype, device=y_hat.device).reshape(self.M, -1)
                y_hat[b][:, here] = decoded + means[b][:, here]
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


# As mbt2018-mean: g_a = [conv, GDN, conv, GDN, conv, GDN, conv]; WLS after each down-sampling
# conv, iWLS after each up-sampling deconv's IGDN and on g_s's output.
@register_backbone(
    "msp-style",
    **MBT2018_LAYOUT,
    options="msp",
    decode_steps=lambda model, height, width: model.decode_steps(),
)
def build_msp_style(N: int, M: int, options: MSPConfig) -> CompressionModel:
    """MSP-style (reconstruction): mbt2018-mean + a progressive sub-lattice context, `steps` decoding steps."""
    return MSPStyle(N=N, M=M, steps=options.steps)
