"""Registered LIC backbones; importing this package fills :data:`BACKBONES`."""

from trainables.backbones import elic, llic, mbt2018, msp, stf, tcm  # noqa: F401  (registration side effect)
from trainables.backbones.registry import (
    BACKBONES,
    BackboneError,
    BackboneSpec,
    get_backbone,
    register_backbone,
)

__all__ = ["BACKBONES", "BackboneError", "BackboneSpec", "get_backbone", "register_backbone"]
