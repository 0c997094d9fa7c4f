"""`load_splits`: any source -> train / val / test `ImageSet`s with fixed, seeded splits.

The val split is a stratified random `val_fraction` of the source's *labelled* training
images, drawn from `seed` alone (numpy PCG64), so every process and machine gets the same
split. `train` keeps the remaining training images in the source's order (unlabelled ones
included), then the first `train_limit` of them.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from raysl.config import DataConfig
from raysl.data.base import ImageSet, Raw, Splits, check_raw, data_error
from raysl.data.images import resize_square

# source name -> (module, function); imported on use so e.g. `digits` never imports pyarrow
LOADERS: dict[str, tuple[str, str]] = {
    "synthetic": ("raysl.data.synthetic", "load_synthetic"),
    "digits": ("raysl.data.digits", "load_digits"),
    "fashion_mnist": ("raysl.data.idx", "load_fashion_mnist"),
    "cifar10": ("raysl.data.cifar", "load_cifar10"),
    "cifar100": ("raysl.data.cifar", "load_cifar100"),
    "stl10": ("raysl.data.stl10", "load_stl10"),
    "imagefolder": ("raysl.data.imagefolder", "load_imagefolder"),
    "parquet": ("raysl.data.parquet", "load_parquet"),
}
_SPLIT_STREAM = 1  # seeds the val split independently of the synthetic images (stream 0)


def read_source(cfg: DataConfig, seed: int) -> Raw:
    """The source's full train split and its test split at native size, checked."""
    module, name = LOADERS[cfg.source]
    raw: Raw = getattr(importlib.import_module(module), name)(cfg, seed)
    return check_raw(raw, cfg.root or "")


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load `cfg.source` as in-memory uint8 tensors with a val split fixed by `seed`.

    Args:
        cfg: the data config (source, root, val_fraction, train_limit, image_size, ...).
        seed: fixes the val split, and the images of `synthetic`.

    Raises:
        ConfigError: missing, empty, corrupt or wrongly formatted data; names `data.root`
            (or the key at fault), the file, what was expected and the fix.
    """
    raw = read_source(cfg, seed)
    train_idx, val_idx = stratified_holdout(raw.train_labels, cfg.val_fraction, seed)
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    train = _take(raw.train_images, raw.train_labels, train_idx, cfg.image_size)
    test = None
    if raw.test_images is not None and raw.test_labels is not None:
        test = _take(raw.test_images, raw.test_labels, None, cfg.image_size)
    mean, std = channel_stats(train.images)
    return Splits(
        name=cfg.source,
        train=train,
        val=_take(raw.train_images, raw.train_labels, val_idx, cfg.image_size),
        test=test,
        num_classes=raw.num_classes,
        mean=mean,
        std=std,
    )


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): val is a stratified random `fraction` of the labelled rows.

    Each class gives floor(fraction * count) rows; the rows left over go to the classes
    with the largest remainders (ties broken by the seed). So val has
    round(fraction * labelled) rows, at least one, and at least one labelled row stays in
    train. Unlabelled rows (label -1) always stay in train. Both arrays are sorted.
    """
    labelled = np.flatnonzero(labels >= 0)
    if labelled.size < 2:
        raise data_error(
            f"need at least 2 labelled training images for a val split, found {labelled.size}",
            "use a source with labels",
            key="data.source",
        )
    classes, counts = np.unique(labels[labelled], return_counts=True)
    n_val = min(max(round(fraction * labelled.size), 1), labelled.size - 1)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    extra = n_val - int(take.sum())
    rng = np.random.default_rng([seed & (2**64 - 1), _SPLIT_STREAM])
    # the `extra` rows go to the largest remainders; ties are broken at random
    order = np.lexsort((rng.random(classes.size), take - quota))
    take[order[:extra]] += 1
    val = [rng.permutation(labelled[labels[labelled] == c])[:k] for c, k in zip(classes, take)]
    val_idx = np.sort(np.concatenate(val))
    keep = np.ones(labels.shape[0], dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) uint8 images in [0, 1], exact (from histograms)."""
    channels = images.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    step = max(1, (1 << 24) // max(1, images[0].numel()))  # ~16M pixels per step
    for start in range(0, images.shape[0], step):
        chunk = images[start : start + step]
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(1).clamp_min(1)
    mean = (counts * values).sum(1) / total
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / total
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def _take(
    images: np.ndarray, labels: np.ndarray, idx: np.ndarray | None, size: int | None
) -> ImageSet:
    """Rows `idx` (all when None) as an ImageSet that owns its memory, resized to `size`."""
    picked = resize_square(images if idx is None else images[idx], size)
    chosen = labels if idx is None else labels[idx]
    return ImageSet(
        images=torch.from_numpy(_owned(picked)),
        labels=torch.from_numpy(_owned(chosen.astype(np.int64))),
    )


def _owned(array: np.ndarray) -> np.ndarray:
    """`array` if it is a plain, writable, C-contiguous array owning its data; else a copy."""
    flags = array.flags
    if type(array) is np.ndarray and flags.owndata and flags.writeable and flags.c_contiguous:
        return array
    return np.array(array, order="C")
