"""Which share of each global batch a process trains on (see :mod:`trainables.training.data_parallel`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel trial (rank 0 of 1 = a one-process trial)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, global_batch: int) -> range:
        """The sample offsets of this rank's share of a global batch of ``global_batch``."""
        if global_batch % self.world_size:
            raise ValueError(f"a batch of {global_batch} does not split over {self.world_size} workers")
        share = global_batch // self.world_size
        return range(self.rank * share, (self.rank + 1) * share)
