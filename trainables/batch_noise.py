"""Random draws of the forward pass made for the global batch, so a data-parallel trial trains the
same model as a one-process trial.

The forward draws per-sample noise from the global torch RNG (quantisation noise of every
CompressAI entropy model, DropPath masks). With the global batch split over N ranks, each rank
draws the tensor of the whole global batch from the same RNG state and keeps its own rows: the
noise each sample sees and the RNG state after the step are those of the one-process run (whose
draw is exactly this tensor). Costs N× the noise draws, which are tiny next to the convolutions.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from torch import Tensor

_shard: Optional[tuple[int, int]] = None  # (rank, world size) while a sharded forward runs


@contextmanager
def global_batch(rank: int, world_size: int) -> Iterator[None]:
    """Within this block, :func:`per_sample` draws for all ``world_size`` shards and keeps ``rank``'s rows."""
    global _shard
    previous, _shard = _shard, (rank, world_size) if world_size > 1 else None
    try:
        yield
    finally:
        _shard = previous


def per_sample(template: Tensor, fill: Callable[[Tensor], Tensor], dim: int = 0) -> Tensor:
    """``fill`` (an in-place random draw) on a tensor shaped like ``template``.

    ``dim`` holds the samples in batch order, one block of equal size per sample (dimension 0 of
    an ``(B, C, H, W)`` map; the last one of CompressAI's ``EntropyBottleneck`` values, which are
    laid out ``(C, 1, B·H·W)``). Sharded, the draw covers every rank's blocks and keeps this rank's.
    """
    if _shard is None:
        return fill(template)
    rank, world = _shard
    dim = dim % template.dim()
    size = template.shape[dim]
    shape = list(template.shape)
    shape[dim] = size * world
    whole = template.new_empty(shape)
    fill(whole)
    return whole.narrow(dim, rank * size, size)
