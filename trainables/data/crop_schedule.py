"""Where ``data.crop_schedule`` puts each batch: its crop size, batch size and first sample.

A stage ``(at, crop, batch_size)`` starts at iteration ``round(at · iterations)`` (the rounding
of ``schedule.milestones``). Batch ``k`` holds samples ``first(k) … first(k) + B_k − 1`` where
``first(k)`` counts the samples of all batches before it, so the sample indices run on without
gaps or repeats across stages and every batch is a pure function of ``(seed, k)``: a restored
trial continues with exactly the batches of the uninterrupted run. Without a schedule there is
one stage and ``first(k) = k · batch_size``, the unstaged loader's numbering.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from trainables.config import DataConfig


@dataclass(frozen=True)
class StagedBatch:
    crop: int
    batch_size: int
    first_sample: int


@dataclass(frozen=True)
class CropPlan:
    """The stages of one trial as iterations: ``starts[i]`` is where stage ``i`` begins."""

    starts: tuple[int, ...]
    crops: tuple[int, ...]
    batch_sizes: tuple[int, ...]

    @classmethod
    def of(cls, cfg: DataConfig, iterations: int) -> "CropPlan":
        if not cfg.crop_schedule:
            return cls((0,), (cfg.crop_size,), (cfg.batch_size,))
        stages = cfg.crop_schedule
        return cls(tuple(int(round(s.at * iterations)) for s in stages), tuple(s.crop for s in stages),
                   tuple(s.batch_size or cfg.batch_size for s in stages))

    def stage(self, iteration: int) -> int:
        """Index of the stage that batch ``iteration`` belongs to (the last one starting at or before it)."""
        return bisect.bisect_right(self.starts, iteration) - 1

    def crop_at(self, iteration: int) -> int:
        return self.crops[self.stage(iteration)]

    def batch(self, iteration: int) -> StagedBatch:
        """Crop, batch size and first sample index of batch ``iteration``."""
        index = self.stage(iteration)
        first = sum((self.starts[i + 1] - self.starts[i]) * self.batch_sizes[i] for i in range(index))
        first += (iteration - self.starts[index]) * self.batch_sizes[index]
        return StagedBatch(self.crops[index], self.batch_sizes[index], first)
