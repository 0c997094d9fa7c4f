"""Parquet shards streamed to the Ray Train workers through Ray Data.

`ray.data.read_parquet` reads the export's `train/` shards in blocks; `map_batches` keeps the
training rows (the seeded val split is held out) and decodes their PNGs on Ray's CPU workers;
Ray Train splits the stream equally over the training workers
(`ray.train.get_dataset_shard`), so no node ever holds the whole training split and every
worker takes the same number of steps. The images each worker evaluates on (val, test and a
kNN bank of at most `eval.bank_limit` rows, default 50,000) come from `raysl.data.stream`.

Batches are shuffled within a buffer (and shard order per epoch), not globally: unlike the
in-memory feed, a streamed run is not step-for-step identical across world sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import ray.train
import torch

from raysl.batches import Batch, DataFeed
from raysl.config import Config
from raysl.data.stream import StreamPlan, plan_stream
from raysl.runtime import Runtime

DEFAULT_BANK = 50_000


def stream_plan(cfg: Config) -> StreamPlan:
    return plan_stream(cfg.data, cfg.seed, cfg.eval.bank_limit or DEFAULT_BANK)


def train_dataset(cfg: Config, plan: StreamPlan) -> ray.data.Dataset:
    """The training rows of the export, decoded to (C, H, W) uint8 images."""
    folder = Path(cfg.data.root).expanduser() / "train"  # type: ignore[arg-type]
    dataset = ray.data.read_parquet(
        str(folder), columns=["image", "label", "index"], shuffle="files"
    )
    return dataset.map_batches(
        _decode,
        fn_kwargs={"keep": plan.train_index, "size": cfg.data.image_size},
        batch_format="numpy",
    )


def _decode(
    batch: dict[str, np.ndarray], keep: np.ndarray, size: int | None
) -> dict[str, np.ndarray]:
    from raysl.data.images import decode_images

    rows = np.flatnonzero(np.isin(batch["index"], keep))
    if not len(rows):
        return {
            "image": np.zeros((0, 1, 1, 1), np.uint8),
            "label": np.zeros(0, np.int64),
            "index": np.zeros(0, np.int64),
        }
    images = decode_images(
        [batch["image"][i] for i in rows], [f"row {i}" for i in rows], size, "data.root"
    )
    return {
        "image": images,
        "label": batch["label"][rows].astype(np.int64),
        "index": batch["index"][rows].astype(np.int64),
    }


class StreamedBatches:
    """This worker's share of the stream: `steps_per_epoch` batches of `local_batch` images."""

    def __init__(
        self, shard: Any, steps_per_epoch: int, local_batch: int, device: torch.device, seed: int
    ) -> None:
        self.shard = shard
        self.steps_per_epoch = steps_per_epoch
        self.local_batch = local_batch
        self.device = device
        self.seed = seed

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches = self.shard.iter_torch_batches(
            batch_size=self.local_batch,
            drop_last=True,
            local_shuffle_buffer_size=4 * self.local_batch,
            local_shuffle_seed=self.seed + epoch,
            device=self.device,
        )
        for step, batch in enumerate(batches):
            if step == self.steps_per_epoch:  # the same count on every worker (DDP)
                break
            yield Batch(batch["image"], batch["label"], batch["index"])


def streamed_feed(cfg: Config, runtime: Runtime) -> DataFeed:
    """The data feed of one Ray Train worker: its shard of the stream plus the eval splits."""
    plan = stream_plan(cfg)
    steps = len(plan.train_index) // cfg.data.batch_size
    batches = StreamedBatches(
        ray.train.get_dataset_shard("train"),
        steps,
        cfg.data.batch_size // runtime.world_size,
        runtime.device,
        cfg.seed,
    )
    source = f"streamed from {cfg.data.root} by Ray Data"
    return DataFeed(
        plan.splits, batches, plan.num_samples, train_size=len(plan.train_index), source=source
    )
