"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

The test split is `train_test_split(test_size=0.2, stratify=y, random_state=0)`: on it,
raw-pixel weighted cosine kNN (k=200, T=0.1, all 1,437 training images as the bank)
scores 92.78 %. Both splits keep the original dataset order.
"""

from __future__ import annotations

import numpy as np

from raysl.config import DataConfig
from raysl.data.base import Raw


def load_digits(cfg: DataConfig, seed: int) -> Raw:
    """1x8x8 uint8 images (0..16 scaled to 0..255), 10 classes; `cfg` and `seed` are unused."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(labels.size), test_size=0.2, stratify=labels, random_state=0
    )
    train, test = np.sort(train), np.sort(test)
    return Raw(
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        num_classes=10,
    )
