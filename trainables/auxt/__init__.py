"""AuxT, the linear auxiliary transform of "Disentangled training" (ICLR 2025), Section 4.

Public API: the building blocks (:class:`DWT2d`, :class:`IDWT2d`, :class:`WLS`,
:class:`IWLS`, :class:`OLP`, :class:`SubbandScaling`) and :func:`attach_auxt`, which adds
them to any registered backbone at its declared stage positions.
"""

from trainables.auxt.attach import (
    AugmentedTransform,
    AuxTConfigError,
    attach_auxt,
    selected_stages,
)
from trainables.auxt.shortcuts import (
    IWLS,
    OLP,
    WLS,
    SubbandScaling,
    orthogonality_penalty,
)
from trainables.auxt.wavelets import DWT2d, IDWT2d, split_subbands

__all__ = [
    "AugmentedTransform",
    "AuxTConfigError",
    "DWT2d",
    "IDWT2d",
    "IWLS",
    "OLP",
    "SubbandScaling",
    "WLS",
    "attach_auxt",
    "orthogonality_penalty",
    "selected_stages",
    "split_subbands",
]
