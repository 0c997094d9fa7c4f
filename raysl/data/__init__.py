"""Every data source as in-memory uint8 tensors with fixed splits, and Parquet export.

    splits = load_splits(cfg.data, seed=cfg.seed)
    splits.train.images  # (N, C, H, W) uint8; row i is instance i
    splits.val           # stratified, seeded sample of the labelled training images
    splits.test          # the source's test split (final reporting only) or None

Sources (`data.source`): synthetic, digits, fashion_mnist, cifar10, cifar100, stl10,
imagefolder, parquet. Nothing here imports Ray.
"""

from __future__ import annotations

from raysl.data.base import ImageSet, Splits
from raysl.data.parquet import export_parquet
from raysl.data.splits import LOADERS, load_splits

__all__ = ["LOADERS", "ImageSet", "Splits", "export_parquet", "load_splits"]
