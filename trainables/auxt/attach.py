"""Attach AuxT to any registered backbone through its declared stage positions (Section 4.2).

The backbone's ``g_a`` / ``g_s`` are replaced by an :class:`AugmentedTransform` that holds
the original ``nn.Sequential`` unchanged plus the shortcut branch, and runs the layers one
by one adding the branch outputs at the declared positions. Since the backbones' own
``forward``, ``compress`` and ``decompress`` all call ``self.g_a`` / ``self.g_s``, they
all include AuxT with no copied code.

Stages are numbered by resolution level: stage ``k`` maps level ``k`` to ``k + 1`` in the
analysis (WLS_k) and back in the synthesis (iWLS_k). Both branches are linear chains from
their transform's input (x, resp. y_hat); ``stages`` selects where the chain is *added*,
and the chain is built only as far as the farthest selected stage, so every parameter
is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from torch import Tensor, nn

from trainables.auxt.shortcuts import IWLS, WLS
from trainables.config import AuxTConfig
from trainables.errors import LicSearchError

if TYPE_CHECKING:
    from trainables.backbones.registry import BackboneSpec

__all__ = ["AugmentedTransform", "AuxTConfigError", "attach_auxt", "selected_stages", "shortcut_kwargs"]


class AuxTConfigError(LicSearchError):
    """An AuxT setting that does not fit the chosen backbone (e.g. a stage it does not have)."""


class AugmentedTransform(nn.Module):
    """A backbone transform plus a parallel linear branch added after given layers.

    ``branch[k]`` is applied to the running branch signal after ``layers[positions[k]]``;
    its output is added to the main path when ``add[k]``. ``last_branch_output`` holds
    the branch's additive contribution to this transform's output (None when the last
    layer gets none), which for ``g_a`` is the AuxT part of the latent y.
    """

    def __init__(
        self,
        layers: nn.Sequential,
        positions: Sequence[int],
        branch: Sequence[nn.Module],
        add: Sequence[bool],
    ) -> None:
        super().__init__()
        if len(add) != len(branch) or len(positions) < len(branch):
            raise ValueError(f"one position and add flag per branch module, got {positions}, {add}, {len(branch)}")
        self.layers = layers
        self.branch = nn.ModuleList(branch)
        self.positions = tuple(int(p) for p in positions[: len(branch)])
        self.add = tuple(bool(a) for a in add)
        self.last_branch_output: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        h, aux, k = x, x, 0
        final = len(self.layers) - 1
        contribution: Optional[Tensor] = None
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.branch) and self.positions[k] == i:
                aux = self.branch[k](aux)
                if self.add[k]:
                    h = h + aux
                    if i == final:
                        contribution = aux
                k += 1
        self.last_branch_output = contribution
        return h


def selected_stages(cfg: AuxTConfig, num_stages: int) -> list[int]:
    """The 0-based stages that get a shortcut (all when ``cfg.stages`` is null)."""
    if cfg.stages is None:
        return list(range(num_stages))
    stages = list(cfg.stages)
    bad = [s for s in stages if not 0 <= s < num_stages]
    if bad:
        raise AuxTConfigError(
            f"model.auxt.stages must hold stage indices in 0..{num_stages - 1}, but got {stages}"
        )
    if len(set(stages)) != len(stages):
        raise AuxTConfigError(f"model.auxt.stages must not repeat a stage, but got {stages}")
    return sorted(stages)


def shortcut_kwargs(cfg: AuxTConfig) -> dict:
    """Constructor arguments shared by every WLS / iWLS of one model."""
    return dict(
        wavelet=cfg.wavelet,
        scaling_init=cfg.scaling_values,
        scaling=cfg.scaling,
        constrained=cfg.projection == "orthogonal",
        downsample=cfg.downsample,
        nonlinearity=cfg.nonlinearity,
    )


def attach_auxt(model: nn.Module, spec: BackboneSpec, cfg: AuxTConfig, N: int, M: int) -> None:
    """Give ``model`` (built by ``spec``) the AuxT described by ``cfg``, in place."""
    if not cfg.enabled or cfg.placement == "none":
        return
    widths = spec.widths(N, M)
    S = spec.num_stages
    stages = selected_stages(cfg, S)
    if not stages:
        return
    kwargs = shortcut_kwargs(cfg)

    if cfg.replace_resampling:  # Appendix A.2: WLS / iWLS take the place of the resampling layers
        if cfg.in_analysis:
            for k in stages:
                model.g_a[spec.down_layers[k]] = WLS(widths[k], widths[k + 1], **kwargs)
        if cfg.in_synthesis:
            for k in stages:
                model.g_s[spec.up_layers[S - 1 - k]] = IWLS(widths[k + 1], widths[k], **kwargs)
        return

    if cfg.in_analysis:
        last = max(stages)
        branch = [WLS(widths[k], widths[k + 1], **kwargs) for k in range(last + 1)]
        model.g_a = AugmentedTransform(
            model.g_a, spec.analysis_positions, branch, [k in stages for k in range(last + 1)]
        )
    if cfg.in_synthesis:
        # g_s order runs from the latent (stage S-1) to the image (stage 0).
        order = list(range(S - 1, min(stages) - 1, -1))
        branch = [IWLS(widths[k + 1], widths[k], **kwargs) for k in order]
        model.g_s = AugmentedTransform(
            model.g_s, spec.synthesis_positions, branch, [k in stages for k in order]
        )
