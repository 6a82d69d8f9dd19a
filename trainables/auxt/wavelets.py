"""2-D discrete wavelet transform as fixed depthwise stride-2 convolutions (paper Section 4.1).

The DWT of WLS and the inverse DWT of iWLS are built from any orthogonal or biorthogonal
PyWavelets filter bank. Boundaries are periodic (PyWavelets' ``periodization`` mode), the
only extension for which a critically sampled transform with filters longer than two taps
is exactly invertible: the periodised analysis operator of an orthogonal basis is an
orthogonal matrix, and the synthesis operator of a biorthogonal pair is its exact inverse.

Subband layout. The four subbands of channel ``c`` sit at channels ``4c + b`` with
``b = 0..3`` for LL, LH, HL, HH (what a grouped convolution naturally produces). Eq. 4
concatenates them band by band instead; that is a fixed permutation of the channels that
the scaling vectors and the 1x1 projection absorb, so the family of transforms is the
same. :func:`split_subbands` returns the four bands in the paper's form.
"""

from __future__ import annotations

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.errors import LicSearchError

__all__ = ["DWT2d", "IDWT2d", "check_even_size", "split_subbands", "wavelet_filters"]


class WaveletError(LicSearchError):
    """A wavelet name that cannot give a perfectly reconstructing 2-D DWT."""


def wavelet_filters(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dec_lo, dec_hi, rec_lo, rec_hi) of a PyWavelets basis as float64 tensors."""
    try:
        wavelet = pywt.Wavelet(name)
    except ValueError as error:
        raise WaveletError(f"wavelet must be a discrete PyWavelets basis, but got {name!r}") from error
    if not (wavelet.orthogonal or wavelet.biorthogonal):
        raise WaveletError(f"wavelet must be orthogonal or biorthogonal, but got {name!r}")
    if wavelet.dec_len % 2 or wavelet.rec_len != wavelet.dec_len:
        raise WaveletError(
            f"wavelet filters must have one even length, but {name!r} has "
            f"dec_len={wavelet.dec_len}, rec_len={wavelet.rec_len}"
        )
    return tuple(torch.tensor(f, dtype=torch.float64) for f in wavelet.filter_bank)  # type: ignore[return-value]


def _kernels_2d(lo: Tensor, hi: Tensor) -> Tensor:
    """The four separable 2-D kernels (LL, LH, HL, HH) as a (4, L, L) tensor.

    ``[i, j]`` indexes (row, column): LH is low-pass along the width and high-pass along
    the height, so for Haar it equals the paper's f_LH = 1/2 [[1, 1], [-1, -1]].
    """
    return torch.stack([
        torch.outer(lo, lo),  # LL
        torch.outer(hi, lo),  # LH
        torch.outer(lo, hi),  # HL
        torch.outer(hi, hi),  # HH
    ])


def _periodic_index(size: int, length: int, device: torch.device) -> Tensor:
    """Index map of a periodic extension by (length/2 - 1) samples on each side."""
    left = length // 2 - 1
    return (torch.arange(-left, size + length - 2 - left, device=device) % size)


def check_even_size(x: Tensor) -> None:
    """The critically sampled DWT halves both sides: they must be even."""
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise WaveletError(f"the DWT needs even height and width, but got {tuple(x.shape[-2:])}")


class DWT2d(nn.Module):
    """One-level 2-D DWT of every channel: (B, C, H, W) -> (B, 4C, H/2, W/2).

    Matches ``pywt.dwt2(x, wavelet, mode="periodization")`` band for band.
    """

    def __init__(self, channels: int, wavelet: str = "haar") -> None:
        super().__init__()
        dec_lo, dec_hi, _, _ = wavelet_filters(wavelet)
        # conv2d is a correlation: flip the filters so that it computes the convolution.
        kernel = _kernels_2d(dec_lo.flip(0), dec_hi.flip(0)).repeat(channels, 1, 1).unsqueeze(1)
        self.register_buffer("kernel", kernel.float(), persistent=False)
        self.channels = channels
        self.wavelet = wavelet
        self.length = int(kernel.shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        check_even_size(x)
        if self.length > 2:
            x = x.index_select(-2, _periodic_index(x.shape[-2], self.length, x.device))
            x = x.index_select(-1, _periodic_index(x.shape[-1], self.length, x.device))
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


class IDWT2d(nn.Module):
    """Inverse of :class:`DWT2d`: (B, 4C, h, w) -> (B, C, 2h, 2w).

    It is the adjoint of the periodised analysis operator built from the reconstruction
    filters (for an orthogonal basis: the transpose of the DWT), i.e. a transposed
    convolution followed by folding the periodic border back onto the signal.
    """

    def __init__(self, channels: int, wavelet: str = "haar") -> None:
        super().__init__()
        _, _, rec_lo, rec_hi = wavelet_filters(wavelet)
        kernel = _kernels_2d(rec_lo, rec_hi).repeat(channels, 1, 1).unsqueeze(1)
        self.register_buffer("kernel", kernel.float(), persistent=False)
        self.channels = channels
        self.wavelet = wavelet
        self.length = int(kernel.shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        full = F.conv_transpose2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)
        if self.length == 2:
            return full
        height, width = 2 * x.shape[-2], 2 * x.shape[-1]
        out = full.new_zeros(*full.shape[:-2], height, full.shape[-1])
        out = out.index_add(-2, _periodic_index(height, self.length, x.device), full)
        folded = out.new_zeros(*out.shape[:-1], width)
        return folded.index_add(-1, _periodic_index(width, self.length, x.device), out)


def split_subbands(coefficients: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(LL, LH, HL, HH), each (B, C, h, w), from a :class:`DWT2d` output."""
    b, c4, h, w = coefficients.shape
    bands = coefficients.reshape(b, c4 // 4, 4, h, w).unbind(2)
    return bands[0], bands[1], bands[2], bands[3]
