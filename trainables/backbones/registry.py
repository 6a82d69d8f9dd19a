"""Backbone registry: YAML says ``backbone: tcm-small`` and gets the model plus its AuxT plan.

Each entry declares, next to its builder, where AuxT attaches (STYLE.md: stage positions
declared per backbone, never a copied forward pass):

* ``widths(N, M)``: channels at each resolution level, image first, latent last, e.g.
  ``(3, N, N, N, M)``; stage ``k`` maps level ``k`` to level ``k + 1``.
* ``analysis_positions[k]``: index in ``g_a`` after whose output stage ``k``'s WLS output is
  added (paper Section 4.2: the output of each down-sampling layer; the last one, the
  output of ``g_a``, i.e. the latent y).
* ``synthesis_positions[j]``: index in ``g_s`` after which the j-th iWLS (in ``g_s`` order,
  latent side first) is added: the mirror image, i.e. the input of each up-sampling layer
  and the output of ``g_s``.
* ``down_layers`` / ``up_layers``: the resampling layers themselves, for Appendix A.2
  (``replace_resampling``).

Optional per backbone:

* ``options``: the ``model.<section>`` of the trial config holding this backbone's own knobs
  (``llic``, ``msp``); its builder then takes it as a third argument, ``build(N, M, options)``.
* ``decode_steps(model, y_height, y_width)``: how many sequential entropy-decoding steps the
  latent ŷ needs once ẑ is decoded (each step one run of the parameter networks and one
  range-decoding pass); trials report it as ``eval/decode_steps``, a decode-time proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from compressai.models import CompressionModel

from trainables.config import BACKBONE_OPTION_SECTIONS
from trainables.errors import LicSearchError

__all__ = ["BackboneSpec", "BackboneError", "BACKBONES", "register_backbone", "get_backbone"]


class BackboneError(LicSearchError):
    """Unknown backbone name, duplicate registration or an inconsistent stage plan."""


Builder = Callable[..., CompressionModel]  # build(N, M) or, with ``options``, build(N, M, options)
DecodeSteps = Callable[[Any, int, int], int]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Builder
    N: int
    M: int
    widths: Callable[[int, int], tuple[int, ...]]
    analysis_positions: tuple[int, ...]
    synthesis_positions: tuple[int, ...]
    down_layers: tuple[int, ...]
    up_layers: tuple[int, ...]
    pad_multiple: int = 64
    # Tiny (N, M) for registry-driven tests (timm's ``test-*`` variants, as width overrides).
    test_widths: tuple[int, int] = (16, 40)
    description: str = field(default="", compare=False)
    options: Optional[str] = None
    decode_steps: Optional[DecodeSteps] = field(default=None, compare=False)

    @property
    def num_stages(self) -> int:
        return len(self.analysis_positions)

    def resolve(self, N: int | None, M: int | None) -> tuple[int, int]:
        """The caller's widths, with unset ones falling back to the backbone's defaults."""
        return (self.N if N is None else N, self.M if M is None else M)


BACKBONES: dict[str, BackboneSpec] = {}


def _check_plan(spec: BackboneSpec) -> None:
    if spec.options is not None and spec.options not in BACKBONE_OPTION_SECTIONS:
        raise BackboneError(f"backbone {spec.name!r}: options must name a model section, one of "
                            f"{', '.join(BACKBONE_OPTION_SECTIONS)}, but got {spec.options!r}")
    stages = len(spec.widths(spec.N, spec.M)) - 1
    for key in ("analysis_positions", "synthesis_positions", "down_layers", "up_layers"):
        value = getattr(spec, key)
        if len(value) != stages:
            raise BackboneError(
                f"backbone {spec.name!r}: {key} must list one index per stage ({stages}), but got {value}"
            )
        if list(value) != sorted(set(value)):
            raise BackboneError(f"backbone {spec.name!r}: {key} must be strictly increasing, but got {value}")


def register_backbone(name: str, **plan: object) -> Callable[[Builder], Builder]:
    """Register ``build(N, M) -> CompressionModel`` under ``name`` with its AuxT plan."""

    def decorator(build: Builder) -> Builder:
        if name in BACKBONES:
            raise BackboneError(f"backbone names must be unique, but {name!r} is already registered")
        spec = BackboneSpec(name=name, build=build, description=(build.__doc__ or "").strip().split("\n")[0],
                            **plan)  # type: ignore[arg-type]
        _check_plan(spec)
        BACKBONES[name] = spec
        return build

    return decorator


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under ``name``; the error lists the allowed names."""
    import trainables.backbones  # noqa: F401  (fills the registry)

    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(
            f"model.backbone must be a registered backbone, but got {name!r}; allowed: {', '.join(sorted(BACKBONES))}"
        ) from None
