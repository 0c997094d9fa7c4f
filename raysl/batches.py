"""Where training batches come from: the loop's data feed.

A `DataFeed` gives the loop its training batches (`TrainBatches`) and the labelled splits
it evaluates on. The default feed holds the training images in memory (on the GPU when they
fit) and samples them with `GlobalBatchSampler`; the Ray launcher can instead stream Parquet
shards through Ray Data (`raysl.launch.ray_data`), with the same interface.

Global-batch sampling that is identical at any world size:

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
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from raysl.data import Splits, load_splits
from raysl.errors import ConfigError, Problem
from raysl.runtime import Runtime, place_images


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


@dataclass(frozen=True)
class Batch:
    """One rank's share of a global batch, on the training device."""

    images: Tensor  # (b, C, H, W) uint8
    labels: Tensor  # (b,) int64, -1 where unknown
    index: Tensor  # (b,) dataset indices (rows of the training split)


class TrainBatches(Protocol):
    """The training batches of one rank, epoch by epoch (every rank yields the same count)."""

    steps_per_epoch: int

    def epoch(self, epoch: int) -> Iterator[Batch]: ...


class InMemoryBatches:
    """Training images held in memory (on the GPU when they fit), sampled by global batch."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        sampler: GlobalBatchSampler,
        device: torch.device,
        on_device: str,
    ) -> None:
        self.sampler = sampler
        self.steps_per_epoch = sampler.steps_per_epoch
        self.device = device
        self.images = place_images(images, device, on_device)
        self.labels = labels.to(device)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for _, index in self.sampler.epoch(epoch):
            index_dev = index.to(self.device, non_blocking=True)
            # by type: a Tune trial's device is "cuda" (no index) while the images are on
            # "cuda:0"; CPU rows for GPU images would be copied to the GPU, blocking, every step
            rows = index_dev if self.images.device.type == self.device.type else index
            images = self.images[rows].to(self.device, non_blocking=True)
            yield Batch(images, self.labels[index_dev], index_dev)


@dataclass(frozen=True)
class DataFeed:
    """Everything the loop needs from the data.

    Attributes:
        splits: the labelled splits for evaluation, and metadata (classes, mean/std, image
            shape). For a streamed feed, `splits.train` may be only the kNN bank's images.
        train: the training batches.
        num_samples: rows in the full training split (dataset indices are in [0, num_samples)).
        train_size: training images per epoch (default: num_samples).
        source: how the training batches arrive, for people ("in memory", "streamed ...").
    """

    splits: Splits
    train: TrainBatches
    num_samples: int
    train_size: int | None = None
    source: str = "in memory"


def in_memory_feed(data_cfg, seed: int, runtime: Runtime) -> DataFeed:
    """Load `data_cfg`'s source into memory and sample it by global batch."""
    splits = load_splits(data_cfg, seed=seed)
    n = len(splits.train.images)
    sampler = GlobalBatchSampler(n, data_cfg.batch_size, seed, runtime.rank, runtime.world_size)
    batches = InMemoryBatches(
        splits.train.images, splits.train.labels, sampler, runtime.device, data_cfg.on_device
    )
    return DataFeed(splits, batches, n)
