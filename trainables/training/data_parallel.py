"""One trial trained data-parallel over N processes (PyTorch DDP), the same model for any N.

* The global batch ``k`` stays a pure function of ``(seed, k)``; rank ``r`` of ``N`` takes rows
  ``r·B/N … (r+1)·B/N − 1`` of it (:class:`Shard`, used by the loader).
* Every loss term is a mean over the batch, and the shares are equal, so DDP's average of the
  ranks' gradients is the gradient of the global batch: learning rates, λ and schedules need no
  rescaling. Clipping acts on the averaged gradients, as in one process.
* Per-sample noise of the forward is drawn for the global batch on every rank
  (:mod:`trainables.batch_noise`), so each sample sees the noise of the one-process run and the
  RNG states stay equal on all ranks (a checkpoint of rank 0 holds everyone's).
* The entropy bottlenecks' quantiles are left out of DDP: their (auxiliary) loss does not depend
  on the data, so every rank computes the same update without communication.
* A checkpoint between evaluations (the clock, SIGTERM to any rank) is agreed on every iteration
  (:func:`agreed`: one small reduction on the CPU), so every rank stops at the same one.
* Evaluation runs on rank 0 only; its result is broadcast so a plateau schedule decays on every
  rank at once. The training loss means and the divergence check are reduced over the ranks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from trainables import batch_noise
from trainables.shard import Shard

__all__ = ["Shard", "shard_quantization_noise", "wrap", "mean_over_ranks", "earliest_over_ranks", "from_rank0",
           "agreed", "union_over_ranks"]


def shard_quantization_noise(model: nn.Module) -> int:
    """Make every CompressAI entropy model draw its training noise for the global batch.

    CompressAI's ``EntropyModel.quantize(x, "noise")`` adds ``U(-½, ½)`` drawn with
    ``torch.empty_like(x).uniform_``; this draws that tensor through :func:`batch_noise.per_sample`
    instead (outside a sharded forward it is the same draw). Returns how many models were changed.
    """
    from compressai.entropy_models import EntropyBottleneck, EntropyModel

    changed = 0
    for module in model.modules():
        if isinstance(module, EntropyModel) and not getattr(module, "_lic_sharded_noise", False):
            inner = module.quantize
            # EntropyBottleneck quantises its input laid out (C, 1, B·H·W); the others get (B, C, H, W).
            dim = -1 if isinstance(module, EntropyBottleneck) else 0

            def quantize(inputs, mode, means=None, _inner=inner, _dim=dim):
                if mode != "noise":
                    return _inner(inputs, mode, means)
                noise = batch_noise.per_sample(torch.empty_like(inputs), lambda t: t.uniform_(-0.5, 0.5), _dim)
                return inputs + noise

            module.quantize = quantize
            module._lic_sharded_noise = True
            changed += 1
    return changed


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, its ``.quantiles`` (aux parameters) left out of the sync."""
    from torch.nn.parallel import DistributedDataParallel

    aux = [name for name, _ in model.named_parameters() if name.endswith(".quantiles")]
    # The documented-by-use way to keep parameters out of DDP (torch has no public one); the
    # library-contract test checks it still exists.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, aux)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)  # equal buffers on every rank: nothing to send per step


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (equal shares: the global batch's mean)."""
    import torch.distributed as dist

    if not values:
        return values
    names = sorted(values)
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(names, tensor.tolist()))


def earliest_over_ranks(first_bad: int, device: torch.device) -> int:
    """The earliest iteration any rank saw a non-finite loss at (``-1``: none did)."""
    import torch.distributed as dist

    never = torch.iinfo(torch.long).max
    tensor = torch.tensor([first_bad if first_bad >= 0 else never], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    value = int(tensor.item())
    return -1 if value == never else value


def from_rank0(value: Optional[Any]) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _cpu_group():
    """A gloo group for the small per-iteration votes (the default group when it is gloo already): on NCCL
    a vote on the GPU would wait for the step's kernels every iteration."""
    import torch.distributed as dist

    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def agreed(local: Callable[[], Optional[str]], reasons: Sequence[str]) -> Callable[[], Optional[str]]:
    """A ``checkpoint_due`` for every rank: the strongest reason any rank's ``local()`` names (``reasons``
    weakest first), on all of them at the same iteration. Every rank must call it at the same iterations
    (the engine does: between evaluations) and create it at the same point (it may create a group)."""
    import torch.distributed as dist

    group = _cpu_group()

    def due() -> Optional[str]:
        reason = local()
        vote = torch.tensor([reasons.index(reason) + 1 if reason is not None else 0], dtype=torch.long)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=group)
        return reasons[int(vote.item()) - 1] if int(vote.item()) else None

    return due


def union_over_ranks(found: dict) -> dict:
    """Every rank's ``found`` entries merged, the first rank's first (e.g. the unreadable files each rank hit)."""
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, found)
    merged: dict = {}
    for each in gathered:
        for key, value in each.items():
            merged.setdefault(key, value)
    return merged
