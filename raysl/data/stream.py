"""A Parquet export's splits without loading its training images, for streaming training.

When training streams the `train/` shards (Ray Data, `raysl.launch.ray_data`), the loop still
needs the labelled images it evaluates on. `plan_stream` reads only the `index` and `label`
columns of the training split, takes the same seeded val split as `load_splits`, and decodes
just the val rows, a kNN bank of at most `bank_limit` training rows and the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raysl.config import DataConfig
from raysl.data.base import ImageSet, Splits
from raysl.data.parquet import _num_classes, parquet_root, read_labels, read_rows
from raysl.data.splits import channel_stats, train_rows


@dataclass(frozen=True)
class StreamPlan:
    """What a streamed run needs besides the streamed rows.

    Attributes:
        splits: val and test as usual; `train` holds only the kNN bank's images.
        train_index: dataset indices of the rows to stream (val removed, `train_fraction`
            and `train_limit` applied).
        num_samples: one more than the largest dataset index (the size of per-image pools).
    """

    splits: Splits
    train_index: np.ndarray
    num_samples: int


def plan_stream(cfg: DataConfig, seed: int, bank_limit: int) -> StreamPlan:
    root = parquet_root(cfg)
    index, labels = read_labels(root / "train")
    train_pos, val_pos = train_rows(labels, cfg, seed)
    train_index = index[train_pos]
    bank_index = train_index[labels[train_pos] >= 0][:bank_limit]
    bank = _image_set(*read_rows(root / "train", bank_index, cfg.image_size, root))
    val = _image_set(*read_rows(root / "train", index[val_pos], cfg.image_size, root))
    test = None
    if (root / "test").is_dir():
        test_index, _ = read_labels(root / "test")
        test = _image_set(*read_rows(root / "test", test_index, cfg.image_size, root))
    mean, std = channel_stats(bank.images)  # of the bank: the full split is not read
    num_classes = _num_classes(root, labels)
    splits = Splits("parquet", bank, val, test, num_classes, mean, std)
    return StreamPlan(splits, train_index, int(index.max()) + 1)


def _image_set(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))
    )
