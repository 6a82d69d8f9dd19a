"""``create_model``: a registered backbone, with AuxT attached as the config says.

:class:`LICModel` is the one interface the training engine, evaluation and benchmarks use,
whatever the backbone (CompressAI-style dicts, real range coding through the backbone's
own ``compress`` / ``decompress``).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.utils import update_registered_buffers
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from trainables.auxt import OLP, AugmentedTransform, attach_auxt
from trainables.backbones import BackboneSpec, get_backbone
from trainables.config import ModelConfig
from trainables.errors import LicSearchError

__all__ = ["LICModel", "InputShapeError", "create_model", "count_parameters", "count_macs"]


class InputShapeError(LicSearchError):
    """An input whose height or width is not a multiple of the model's ``pad_multiple``."""


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class LICModel(nn.Module):
    """A backbone (``self.backbone``) plus its AuxT, behind one stable contract.

    ``forward(x)`` returns ``x_hat``, ``likelihoods`` (dict of tensors), ``y`` (the latent
    that is quantized, AuxT included) and ``y_auxt`` (AuxT's additive part of y, or None).
    """

    def __init__(self, backbone: CompressionModel, spec: BackboneSpec, config: ModelConfig, N: int, M: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.config = config
        self.N, self.M = N, M
        self.pad_multiple: int = spec.pad_multiple
        self.ortho_norm = config.auxt.ortho_norm
        self._latent: Optional[Tensor] = None
        # y is read off g_a's output, so the backbone's forward runs unmodified.
        backbone.g_a.register_forward_hook(self._capture_latent)

    def _capture_latent(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self._latent = output

    def check_input(self, x: Tensor) -> None:
        height, width = x.shape[-2:]
        if height % self.pad_multiple or width % self.pad_multiple:
            raise InputShapeError(
                f"input height and width must be multiples of {self.pad_multiple} for backbone "
                f"{self.spec.name!r}, but got {height}x{width}; pad the image first"
            )

    def forward(self, x: Tensor) -> dict[str, Any]:
        self.check_input(x)
        out = self.backbone(x)
        y, self._latent = self._latent, None
        g_a = self.backbone.g_a
        y_auxt = g_a.last_branch_output if isinstance(g_a, AugmentedTransform) else None
        return {"x_hat": out["x_hat"], "likelihoods": out["likelihoods"], "y": y, "y_auxt": y_auxt}

    def olps(self) -> Iterator[OLP]:
        return (m for m in self.modules() if isinstance(m, OLP))

    def ortho_loss(self) -> Tensor:
        """Σ over all OLPs of ||G − I||² (Eq. 5 / Appendix A.5) at ``auxt.ortho_norm``; 0 without AuxT.

        The caller multiplies by ``auxt.lambda_orth``. Unconstrained projections (A1) add 0.
        """
        device = next(self.parameters()).device
        total = torch.zeros((), device=device)
        for olp in self.olps():
            if olp.constrained:
                total = total + olp.ortho_loss(self.ortho_norm)
        return total

    def aux_loss(self) -> Tensor:
        """Entropy-bottleneck quantile loss (CompressAI's aux loss)."""
        return self.backbone.aux_loss()

    def aux_parameters(self) -> list[nn.Parameter]:
        """The entropy bottlenecks' quantiles, trained by the aux optimizer only."""
        return [p for n, p in self.named_parameters() if n.endswith(".quantiles")]

    def main_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (disjoint from :meth:`aux_parameters`)."""
        return [p for n, p in self.named_parameters() if not n.endswith(".quantiles")]

    def update(self, force: bool = False) -> bool:
        """Refresh the entropy coders' CDF tables (needed before compress / decompress)."""
        return bool(self.backbone.update(force=force))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``, first resizing the entropy coders' CDF buffers.

        Their size is only known after ``update()``, so a checkpoint saved after it would
        not load into a fresh model otherwise (CompressAI's ``CompressionModel`` does the
        same; the wrapper must too since it owns the backbone).
        """
        state_dict = dict(state_dict)
        for name, module in self.named_modules():
            names = ["_quantized_cdf", "_offset", "_cdf_length"]
            if isinstance(module, GaussianConditional):
                names.append("scale_table")
            elif not isinstance(module, EntropyBottleneck):
                continue
            if all(f"{name}.{b}" in state_dict for b in names):
                update_registered_buffers(module, name, names, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def decode_steps(self, height: int, width: int) -> Optional[int]:
        """Sequential entropy-decoding steps of ŷ for a padded ``height`` x ``width`` image (None: undeclared)."""
        if self.spec.decode_steps is None:
            return None
        return int(self.spec.decode_steps(self.backbone, height // 16, width // 16))

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict[str, Any]:
        self.check_input(x)
        return self.backbone.compress(x)

    @torch.no_grad()
    def decompress(self, strings: Any, shape: Any) -> dict[str, Any]:
        return self.backbone.decompress(strings, shape)


def create_model(cfg: ModelConfig) -> LICModel:
    """Build ``cfg.backbone`` at widths (N, M) (defaults when null) and attach ``cfg.auxt``."""
    spec = get_backbone(cfg.backbone)
    N, M = spec.resolve(cfg.N, cfg.M)
    options = () if spec.options is None else (getattr(cfg, spec.options),)
    backbone = spec.build(N, M, *options)
    attach_auxt(backbone, spec, cfg.auxt, N, M)
    return LICModel(backbone, spec, cfg, N, M)


def _forward_macs(model: LICModel, height: int, width: int) -> float:
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width, device=device))
    return counter.get_total_flops() / 2


@torch.no_grad()
def count_macs(model: LICModel, height: int = 512, width: int = 768, probe: Optional[int] = None) -> int:
    """Multiply-accumulates of one forward pass on a ``height`` x ``width`` image (FLOPs / 2).

    Counted with ``torch.utils.flop_counter`` (convolutions, linear layers, attention
    matmuls; elementwise ops are not MACs). With ``probe``, the pass runs on
    ``probe`` x ``probe`` and ``probe`` x ``2 probe`` images and the count is extrapolated
    as a + b·pixels: exact for the registered backbones, whose counted ops cost a fixed
    amount per pixel (convolutions, fixed-size attention windows) plus a constant (AuxT's
    fused kernels), as long as the probes need no window padding (128 is safe for all of
    them). It makes the count of a 76 M-parameter model take seconds on a CPU.
    """
    was_training = model.training
    model.eval()
    try:
        if not probe:
            return int(round(_forward_macs(model, height, width)))
        small = _forward_macs(model, probe, probe)
        large = _forward_macs(model, probe, 2 * probe)
    finally:
        model.train(was_training)
    per_pixel = (large - small) / (probe * probe)
    return int(round(small + per_pixel * (height * width - probe * probe)))
