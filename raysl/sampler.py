"""Global-batch sampling that is identical at any world size.

Each epoch draws one permutation of the training set from (seed, epoch) and cuts it into
global batches of `global_batch` images (the last incomplete batch is dropped, as SSL
recipes do, so batch-norm and contrastive statistics keep a constant batch). Rank r takes the
r-th contiguous slice of every global batch. Together with augmentation parameters drawn for
the whole global batch from (seed, epoch, step), a W-process run sees exactly the batches
and views of a single process, which is what the distributed-equivalence tests check.
Ranks never see the same image in an epoch, as with `DistributedSampler`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from raysl.errors import ConfigError, Problem


def step_seed(seed: int, epoch: int, step: int) -> int:
    """A 63-bit seed unique to (seed, epoch, step)."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + step) % (2**63 - 1)


class GlobalBatchSampler:
    """Yields (step, local_indices) for one rank.

    Args:
        num_samples: training images.
        global_batch: images per step over all ranks (`data.batch_size`).
        seed: the run's seed.
        rank, world_size: this process's place in the group.
    """

    def __init__(
        self, num_samples: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(
                Problem(
                    f"the global batch ({global_batch}) must be divisible by the number of workers ({world_size}); "
                    f"use a multiple of {world_size}",
                    key="data.batch_size",
                )
            )
        if global_batch > num_samples:
            raise ConfigError(
                Problem(
                    f"the global batch ({global_batch}) is larger than the training set ({num_samples} images)",
                    key="data.batch_size",
                )
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.steps_per_epoch = num_samples // global_batch

    def local_slice(self) -> slice:
        """This rank's rows within a global batch."""
        return slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def epoch(self, epoch: int) -> Iterator[tuple[int, Tensor]]:
        generator = torch.Generator().manual_seed(step_seed(self.seed, epoch, -1))
        order = torch.randperm(self.num_samples, generator=generator)
        rows = self.local_slice()
        for step in range(self.steps_per_epoch):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            yield step, batch[rows]
