"""Real-bitstream evaluation of a trained checkpoint: compress, decompress, measure.

Training reports bpp from the likelihoods; a codec is judged on the bytes its range coder
writes (CompressAI's ``compress``/``decompress``, as in ``compressai.utils.eval_model``).
Every image is padded to the backbone's multiple, coded, decoded and cropped back; bpp is
the bitstream size over the *unpadded* pixels; PSNR (RGB) and MS-SSIM are computed on the
8-bit reconstruction, like CompressAI's evaluation. Two checks catch codec bugs: the decoded
image must equal the forward pass's reconstruction (both use the same quantized latents), and
the bitstream rate is compared with the likelihood estimate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from trainables.device import resolve_device
from trainables.errors import LicSearchError
from trainables.losses import bpp as bits_per_pixel
from trainables.metrics import PerImage

DECODE_TOLERANCE = 1e-3  # max |decoded − forward x_hat| on [0, 1]; well under one 8-bit level (1/255)
MS_SSIM_MIN_SIDE = 161  # pytorch_msssim's 5 scales with an 11-tap window need a side > 160


class EvaluationError(LicSearchError):
    """An evaluation cannot run (no images, unreadable checkpoint) or its checks failed."""


@dataclass
class ImageResult:
    name: str
    height: int
    width: int
    bpp: float  # from the bitstream bytes
    likelihood_bpp: float  # from the forward pass's likelihoods
    psnr: float  # dB, RGB, 8-bit
    ms_ssim: Optional[float]  # None for images too small for 5-scale MS-SSIM
    encoding_time: float  # seconds
    decoding_time: float
    max_decode_error: float  # max |decoded − forward reconstruction| on [0, 1]
    mse: Optional[float] = None  # of the 8-bit reconstruction, on the [0, 1] scale of eval/mse

    @property
    def rate_overhead(self) -> float:
        """Relative excess of the bitstream over the likelihood estimate (0.01 = 1% more bits)."""
        return self.bpp / self.likelihood_bpp - 1.0 if self.likelihood_bpp > 0 else math.inf


@dataclass
class EvalResult:
    """One checkpoint on one image folder."""

    checkpoint: str
    data: str
    lmbda: Optional[float]
    images: list[ImageResult] = field(default_factory=list)

    def mean(self, attribute: str) -> Optional[float]:
        values = [getattr(r, attribute) for r in self.images]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values and len(values) == len(self.images) else None

    @property
    def rate_overhead(self) -> float:
        """Bitstream bits over likelihood bits, summed over all images, minus 1."""
        bits = sum(r.bpp * r.height * r.width for r in self.images)
        estimate = sum(r.likelihood_bpp * r.height * r.width for r in self.images)
        return bits / estimate - 1.0 if estimate > 0 else math.inf

    @property
    def max_decode_error(self) -> float:
        return max((r.max_decode_error for r in self.images), default=0.0)

    @property
    def decoded_matches(self) -> bool:
        return self.max_decode_error < DECODE_TOLERANCE

    def per_image(self, distortion: str = "mse") -> PerImage:
        """Each image's bpp (bitstream), PSNR, MSE, MS-SSIM and R-D loss (with the checkpoint's λ), as training's
        evaluations record them (``trainables.metrics.PerImage``)."""
        from trainables.losses import rd_loss_value

        table = PerImage()
        for r in self.images:
            loss = (None if self.lmbda is None or r.mse is None
                    else rd_loss_value(distortion, self.lmbda, r.bpp, mse=r.mse, ms_ssim=r.ms_ssim))
            table.add(r.name, bpp=r.bpp, psnr=r.psnr, mse=r.mse, ms_ssim=r.ms_ssim, rd_loss=loss)
        return table

    def image_set(self) -> dict[str, Any]:
        """Which images this ran on (folder, count, ``WxH`` sizes): BD-rate needs the anchor's set."""
        sizes: dict[str, int] = {}
        for r in self.images:
            key = f"{r.width}x{r.height}"
            sizes[key] = sizes.get(key, 0) + 1
        return {"folder": self.data, "count": len(self.images), "sizes": sizes}

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "data": self.data, "lmbda": self.lmbda,
                "image_set": self.image_set(),
                "rate_overhead": self.rate_overhead, "max_decode_error": self.max_decode_error,
                "decoded_matches": self.decoded_matches,
                "images": [asdict(r) | {"rate_overhead": r.rate_overhead} for r in self.images]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_8bit(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round()


def mse_8bit(x: Tensor, x_hat: Tensor) -> float:
    """MSE of the 8-bit images, on the [0, 1] scale (as training's eval/mse)."""
    return torch.mean((_to_8bit(x) - _to_8bit(x_hat)) ** 2).item() / 255.0**2


def psnr_8bit(x: Tensor, x_hat: Tensor) -> float:
    """PSNR (dB) of the 8-bit images, as CompressAI's ``eval_model`` computes it."""
    mse = mse_8bit(x, x_hat)
    return math.inf if mse == 0 else -10 * math.log10(mse)


def ms_ssim_8bit(x: Tensor, x_hat: Tensor) -> Optional[float]:
    from pytorch_msssim import ms_ssim

    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    return float(ms_ssim(_to_8bit(x).float(), _to_8bit(x_hat).float(), data_range=255.0))


def bitstream_bytes(strings: Sequence[Sequence[bytes]]) -> int:
    """Total bytes of every latent's strings (CompressAI: one list per latent, one string per image)."""
    return sum(len(s) for group in strings for s in group)


@torch.no_grad()
def evaluate_image(model: Any, x: Tensor, name: str = "image") -> ImageResult:
    """Code one image ``x`` (1×3×H×W in [0, 1], on the model's device) and measure it."""
    from trainables.data.images import crop_to, pad_to_multiple

    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise EvaluationError(f"{name}: expected a 1x3xHxW image tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    pixels = height * width
    padded, size = pad_to_multiple(x, model.pad_multiple)

    # Coding first, then the forward pass: an encoder that searches its latents per image
    # (trainables.lof.LOFCodec) times the search in compress and reuses the result here.
    _sync(x.device)
    start = time.perf_counter()
    encoded = model.compress(padded)
    _sync(x.device)
    encoding_time = time.perf_counter() - start
    start = time.perf_counter()
    decoded = model.decompress(encoded["strings"], encoded["shape"])
    _sync(x.device)
    decoding_time = time.perf_counter() - start
    x_decoded = crop_to(decoded["x_hat"], size).clamp(0, 1)

    forward = model(padded)
    x_forward = crop_to(forward["x_hat"], size).clamp(0, 1)

    return ImageResult(
        name=name,
        height=int(height),
        width=int(width),
        bpp=bitstream_bytes(encoded["strings"]) * 8.0 / pixels,
        likelihood_bpp=float(bits_per_pixel(forward["likelihoods"], pixels)),
        psnr=psnr_8bit(x, x_decoded),
        ms_ssim=ms_ssim_8bit(x, x_decoded),
        encoding_time=encoding_time,
        decoding_time=decoding_time,
        max_decode_error=float((x_decoded - x_forward).abs().max()),
        mse=mse_8bit(x, x_decoded),
    )


def evaluate_model(model: Any, data: Path, device: torch.device, checkpoint: str = "<model>",
                   lmbda: Optional[float] = None, max_images: Optional[int] = None,
                   on_image: Optional[Callable[[ImageResult], None]] = None) -> EvalResult:
    """Evaluate an already-built model (eval mode, entropy coders updated) on every image of ``data``;
    ``on_image`` hears of each image as it is done (a command's progress)."""
    from trainables.data.images import list_images, load_rgb8

    paths = list_images(Path(data))
    if max_images is not None:
        paths = paths[:max_images]
    model.eval()
    result = EvalResult(checkpoint=checkpoint, data=str(data), lmbda=lmbda)
    for path in paths:
        array = load_rgb8(path)  # (H, W, 3) uint8; an unreadable file is an error naming it
        x = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0).unsqueeze(0).to(device)
        result.images.append(evaluate_image(model, x, Path(path).name))
        if on_image is not None:
            on_image(result.images[-1])
    return result


def evaluate_checkpoint(checkpoint: Path, data: Path, device: str = "auto", max_images: Optional[int] = None,
                        on_image: Optional[Callable[[ImageResult], None]] = None) -> EvalResult:
    """Load a trial checkpoint (``trainables.training.checkpoint``) and evaluate it on ``data``."""
    from trainables.training.checkpoint import load_trained_model

    target = resolve_device(device)
    model, config = load_trained_model(Path(checkpoint), map_location=target)
    return evaluate_model(model, data, target, checkpoint=str(checkpoint), lmbda=config.loss.lmbda,
                          max_images=max_images, on_image=on_image)


__all__ = ["ImageResult", "EvalResult", "EvaluationError", "evaluate_image", "evaluate_model",
           "evaluate_checkpoint", "mse_8bit", "psnr_8bit", "ms_ssim_8bit", "bitstream_bytes",
           "DECODE_TOLERANCE"]
