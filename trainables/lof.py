"""Latent overfitting (LOF): refine one image's latents at encode time, decoder untouched.

A trained encoder ``g_a`` is amortised over all images; for one image, gradient descent on
its own latent y (and optionally the hyper-latent z) lowers that image's R-D loss
``λ·D + R`` further (Campos et al. 2019; Yang et al., NeurIPS 2020, "Improving inference
for neural image compression"; used by the progressive-model paper, Zhang et al. 2022).
Every weight and the entropy models stay frozen, and the refined latents are coded by the
backbone's own ``compress``, so the bitstream format is unchanged and any decoder of the
same checkpoint decodes it. Only encoding gets slower (K forward/backward passes).

One mechanism for every backbone, with no per-backbone code:

* **Latent injection** (:func:`injected_latents`): the backbone's ``g_a`` (and, when z is
  refined, its hyper-analysis ``h_a``, wherever it sits, e.g. ELIC's
  ``latent_codec.hyper.h_a``) is swapped for a module returning the given tensor, so the
  backbone's unmodified ``forward`` maps (y, z) to (x̂, likelihoods) and its unmodified
  ``compress`` codes them. AuxT rides along: the injected y is the whole latent (the
  AuxT branch included), and g_s with its iWLS is used as trained.
* **Rounding proxy** (:func:`rounding_proxy`): during refinement every CompressAI entropy
  model's ``quantize`` is replaced by a differentiable proxy of ``round(v − μ) + μ``:
  ``noise`` (additive U(−½, ½)), ``ste`` (straight-through rounding) or ``sga``
  (stochastic Gumbel annealing, Yang et al. 2020, Sec. 3.3: a Gumbel-softmax between
  floor and ceil with logits −atanh(distance)/τ and τ annealed geometrically from
  ``tau_max`` to ``tau_min`` over the K steps). The proxy is what the rate term sees, and
  the reconstruction too where the backbone takes ŷ from its entropy model
  (mbt2018-mean); backbones that round ŷ themselves with a straight-through estimator
  (ELIC, TCM, STF) keep that for the distortion path ("mixed" quantization, Minnen &
  Singh 2020).

After the K steps the rounded R-D loss (what the coder sees) of the refined latents is
compared with the encoder's: the better pair is coded, so a too-large learning rate cannot
make an image worse than plain encoding (two extra forward passes).
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import torch
from compressai.entropy_models.entropy_models import EntropyModel
from torch import Tensor, nn

from trainables.errors import LicSearchError
from trainables.losses import RateDistortionLoss

__all__ = ["LOFConfig", "LOFError", "LOFCodec", "LOFResult", "PROXIES", "LATENTS", "injected_latents",
           "rounding_proxy", "refine_latents", "hyper_analysis_path", "lof_settings",
           "evaluate_checkpoint_lof"]

PROXIES = ("noise", "ste", "sga")
LATENTS = ("y", "y+z")


class LOFError(LicSearchError):
    """An LOF setting out of range, or a backbone LOF cannot reach into."""


@dataclass(frozen=True)
class LOFConfig:
    """Knobs of one LOF setting; ``iterations=0`` is plain encoding."""

    iterations: int = 0
    lr: float = 5e-3  # Adam, as Yang et al. 2020
    latents: Literal["y", "y+z"] = "y"
    proxy: Literal["noise", "ste", "sga"] = "sga"
    tau_max: float = 0.5  # SGA temperature at the first step (Yang et al.: 0.5)
    tau_min: float = 0.05  # ... and at the last
    seed: int = 0  # noise / Gumbel draws: the same image encodes the same way every time

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise LOFError(f"lof.iterations must be an integer >= 0, but got {self.iterations!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise LOFError(f"lof.lr must be a finite number > 0, but got {self.lr!r}")
        if self.latents not in LATENTS:
            raise LOFError(f"lof.latents must be one of {', '.join(LATENTS)}, but got {self.latents!r}")
        if self.proxy not in PROXIES:
            raise LOFError(f"lof.proxy must be one of {', '.join(PROXIES)}, but got {self.proxy!r}")
        if not 0 < self.tau_min <= self.tau_max:
            raise LOFError(f"lof: `0 < tau_min <= tau_max` must hold, but got (tau_min={self.tau_min}, "
                           f"tau_max={self.tau_max})")

    @property
    def label(self) -> str:
        """Short name for tables and curve names, e.g. ``lof50`` or ``lof200-lr0.003-ste``."""
        if self.iterations == 0:
            return "lof0"
        parts = [f"lof{self.iterations}", f"lr{self.lr:g}"]
        if self.latents != "y":
            parts.append(self.latents.replace("+", ""))
        if self.proxy != "sga":
            parts.append(self.proxy)
        return "-".join(parts)


# ----------------------------------------------------------------- latent injection
class _Constant(nn.Module):
    """Stands in for a transform: ignores its input, returns the injected latent."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, *_: Any) -> Tensor:
        return self.value


def hyper_analysis_path(backbone: nn.Module) -> str:
    """Dotted name of the backbone's one hyper-analysis transform ``h_a`` (z = h_a(y))."""
    names = [name for name, _ in backbone.named_modules() if name.split(".")[-1] == "h_a"]
    if len(names) != 1:
        raise LOFError(f"LOF refines z through the backbone's hyper-analysis `h_a`, but "
                       f"{type(backbone).__name__} has {len(names)} modules named h_a: {names}")
    return names[0]


def _swap(root: nn.Module, path: str, module: nn.Module) -> nn.Module:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    previous = getattr(parent, attr)
    setattr(parent, attr, module)
    return previous


@contextmanager
def injected_latents(backbone: nn.Module, y: Tensor, z: Optional[Tensor] = None) -> Iterator[None]:
    """Inside the block the backbone's ``g_a`` returns ``y`` (and ``h_a`` returns ``z``)."""
    swapped = [("g_a", _Constant(y))]
    if z is not None:
        swapped.append((hyper_analysis_path(backbone), _Constant(z)))
    originals = [(path, _swap(backbone, path, module)) for path, module in swapped]
    try:
        yield
    finally:
        for path, original in reversed(originals):
            _swap(backbone, path, original)


# ------------------------------------------------------------------ rounding proxies
def _soft_round_sga(v: Tensor, tau: float, generator: torch.Generator) -> Tensor:
    """Stochastic Gumbel annealing (Yang et al. 2020, Eq. 7): a relaxed draw of floor or ceil."""
    floor = torch.floor(v)
    eps = 1e-5
    to_floor = (v - floor).clamp(eps, 1 - eps)  # distance to floor, in (0, 1)
    to_ceil = 1 - to_floor
    logits = torch.stack([-torch.atanh(to_floor), -torch.atanh(to_ceil)], dim=-1) / tau
    uniform = torch.rand(logits.shape, generator=generator, device=v.device, dtype=v.dtype)
    gumbel = -torch.log((-torch.log(uniform.clamp(1e-10, 1.0))).clamp_min(1e-10))
    # A relaxed one-hot draw at temperature τ (the release's RelaxedOneHotCategorical(τ, logits)).
    weights = torch.softmax((logits + gumbel) / tau, dim=-1)
    return floor + weights[..., 1]


def _proxy_fn(name: str, tau: float, generator: torch.Generator) -> Callable[[Tensor], Tensor]:
    if name == "noise":
        return lambda v: v + (torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype) - 0.5)
    if name == "ste":
        return lambda v: torch.round(v).detach() + (v - v.detach())
    return lambda v: _soft_round_sga(v, tau, generator)


@contextmanager
def rounding_proxy(backbone: nn.Module, proxy: str, tau: float, generator: torch.Generator) -> Iterator[None]:
    """Every entropy model's training/eval quantization becomes ``proxy``; coding is untouched."""
    fn = _proxy_fn(proxy, tau, generator)
    models = [m for m in backbone.modules() if isinstance(m, EntropyModel)]

    def patched(original: Callable) -> Callable:
        def quantize(inputs: Tensor, mode: str, means: Optional[Tensor] = None) -> Tensor:
            if mode not in ("noise", "dequantize"):
                return original(inputs, mode, means)  # "symbols": real coding stays exact
            if means is None:
                return fn(inputs)
            return fn(inputs - means) + means
        return quantize

    for m in models:
        m.quantize = patched(m.quantize)  # instance attribute shadows the method
    try:
        yield
    finally:
        for m in models:
            del m.quantize


# ------------------------------------------------------------------------ refinement
@dataclass
class LOFResult:
    y: Tensor
    z: Optional[Tensor]
    losses: list[float] = field(default_factory=list)  # proxy R-D loss per step
    seconds: float = 0.0
    initial_loss: Optional[float] = None  # rounded λ·D + bpp of the encoder's latents
    final_loss: Optional[float] = None  # ... and of the returned ones (never above initial_loss)


def _temperature(cfg: LOFConfig, step: int) -> float:
    if cfg.iterations <= 1:
        return cfg.tau_min
    return cfg.tau_max * (cfg.tau_min / cfg.tau_max) ** (step / (cfg.iterations - 1))


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def refine_latents(model: Any, x: Tensor, loss_fn: RateDistortionLoss, cfg: LOFConfig) -> LOFResult:
    """Minimise ``loss_fn`` (λ·D + bpp of the proxy forward pass) over x's latents for K steps.

    ``model`` is a :class:`trainables.model.LICModel` in eval mode; ``x`` its (padded) input.
    """
    backbone = model.backbone
    start = time.perf_counter()
    with torch.no_grad():
        y0 = backbone.g_a(x)
        z0 = backbone.get_submodule(hyper_analysis_path(backbone))(y0) if cfg.latents == "y+z" else None
    if cfg.iterations == 0:
        return LOFResult(y0, z0, seconds=time.perf_counter() - start)
    y = y0.clone().requires_grad_(True)
    z = None if z0 is None else z0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([y] if z is None else [y, z], lr=cfg.lr)
    generator = torch.Generator(device=x.device).manual_seed(cfg.seed)
    losses: list[float] = []
    with _frozen(model), torch.enable_grad():
        for step in range(cfg.iterations):
            with rounding_proxy(backbone, cfg.proxy, _temperature(cfg, step), generator), \
                    injected_latents(backbone, y, z):
                out = backbone(x)
            loss = loss_fn(out, x)["loss"]
            losses.append(float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    y, z = y.detach(), None if z is None else z.detach()
    # Proxy losses at different temperatures do not compare; the rounded loss does (it is
    # what the coder sees), so an image never ends up worse than its encoder's latents.
    before, after = _rounded_loss(model, x, loss_fn, y0, z0), _rounded_loss(model, x, loss_fn, y, z)
    if after > before:
        y, z = y0, z0
    return LOFResult(y, z, losses, time.perf_counter() - start, before, min(before, after))


@torch.no_grad()
def _rounded_loss(model: Any, x: Tensor, loss_fn: RateDistortionLoss, y: Tensor, z: Optional[Tensor]) -> float:
    """λ·D + bpp of the latents as coded (eval-mode forward: hard rounding)."""
    with injected_latents(model.backbone, y, z):
        return float(loss_fn(model.backbone(x), x)["loss"])


class LOFCodec:
    """A trained model whose encoder overfits each image's latents before coding.

    Model-shaped (``pad_multiple``, ``eval``, ``__call__``, ``compress``, ``decompress``),
    so :func:`trainables.evaluation.evaluate_image` measures it as it measures the plain
    model: ``compress`` includes the refinement (the encode time is LOF's real cost);
    a forward pass after it on the same input tensor reuses the latents ``compress`` coded,
    so "decoded == forward reconstruction" still checks the bitstream. ``decompress`` is
    the unchanged model's.
    """

    def __init__(self, model: Any, loss_fn: RateDistortionLoss, cfg: LOFConfig) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.cfg = cfg
        self.pad_multiple: int = model.pad_multiple
        self._last: Optional[tuple[Tensor, LOFResult]] = None

    def eval(self) -> "LOFCodec":
        self.model.eval()
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor) -> dict[str, Any]:
        latents = self._last[1] if self._last is not None and self._last[0] is x else self.refine(x)
        with injected_latents(self.model.backbone, latents.y, latents.z):
            return self.model(x)

    def refine(self, x: Tensor) -> LOFResult:
        """Refine x's latents and remember them for the forward pass on the same tensor."""
        result = refine_latents(self.model, x, self.loss_fn, self.cfg)
        self._last = (x, result)
        return result

    def compress(self, x: Tensor) -> dict[str, Any]:
        latents = self.refine(x)  # always: the refinement is part of the encoding time
        with injected_latents(self.model.backbone, latents.y, latents.z):
            return self.model.compress(x)

    def decompress(self, strings: Any, shape: Any) -> dict[str, Any]:
        return self.model.decompress(strings, shape)


# ------------------------------------------------------------------------ evaluation
def lof_settings(iterations: Sequence[int], lrs: Sequence[float], latents: str = "y",
                 proxy: str = "sga") -> list[LOFConfig]:
    """Every (iterations, lr) pair as a setting; ``iterations=0`` once (it has no lr)."""
    settings: list[LOFConfig] = []
    for k in iterations:
        for lr in ([lrs[0]] if k == 0 else lrs):
            cfg = LOFConfig(iterations=k, lr=lr, latents=latents, proxy=proxy)  # type: ignore[arg-type]
            if cfg.label not in {s.label for s in settings}:
                settings.append(cfg)
    return settings


def evaluate_checkpoint_lof(checkpoint: Path, data: Path, settings: Sequence[LOFConfig], device: str = "auto",
                            max_images: Optional[int] = None,
                            on_image: Optional[Callable[[LOFConfig, Any], None]] = None) -> list[Any]:
    """One :class:`trainables.evaluation.EvalResult` per setting, the model loaded once.

    LOF minimises the checkpoint's own training objective (its ``loss`` section: λ and the
    distortion), so each setting's point lies on the same R-D trade-off as the plain one.
    """
    from trainables.device import resolve_device
    from trainables.evaluation import evaluate_model
    from trainables.training.checkpoint import load_trained_model

    target = resolve_device(device)
    model, config = load_trained_model(Path(checkpoint), map_location=target)
    loss_fn = RateDistortionLoss(config.loss.distortion, config.loss.lmbda)
    return [evaluate_model(LOFCodec(model, loss_fn, cfg), data, target, checkpoint=str(checkpoint),
                           lmbda=config.loss.lmbda, max_images=max_images,
                           on_image=None if on_image is None else functools.partial(on_image, cfg))
            for cfg in settings]
