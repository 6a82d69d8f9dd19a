"""The trainable a search launches: :func:`trainables.training.trainable.train_lic` reading the search's
training index instead of walking the training folder.

The driver builds the index once (``search.experiment.train_index``) and passes ``{data.train: index
location}`` through ``tune.with_parameters``; every trial start, retry and restore reads the
same index, so no trial walks the tree and a resumed search keeps its sample order.
"""

from __future__ import annotations

from typing import Optional

from trainables.data.file_index import use_train_indexes
from trainables.training.trainable import train_lic


def train_lic_indexed(config: dict, train_indexes: Optional[dict[str, str]] = None) -> None:
    """Ray Tune entry point: ``train_lic`` with ``train_indexes`` in use."""
    with use_train_indexes(train_indexes):
        train_lic(config)


train_lic_indexed.__mixins__ = train_lic.__mixins__  # SIGTERM checkpoints (trainables.training.preemption)
