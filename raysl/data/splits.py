"""`load_splits`: any source -> train / val / test `ImageSet`s with fixed, seeded splits.

The val split is a stratified random `val_fraction` of the source's *labelled* training
images, drawn from `seed` alone (numpy PCG64), so every process and machine gets the same
split. `train` keeps the remaining training images in the source's order (unlabelled ones
included), then a stratified random `train_fraction` of them (seeded by `seed` on a stream of
its own, so the val split does not depend on it), then the first `train_limit` of them.
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
_FRACTION_STREAM = 2  # seeds the `train_fraction` subset independently of both


def read_source(cfg: DataConfig, seed: int) -> Raw:
    """The source's full train split and its test split at native size, checked."""
    module, name = LOADERS[cfg.source]
    where = cfg.root or ""
    try:
        raw: Raw = getattr(importlib.import_module(module), name)(cfg, seed)
    except PermissionError as exc:
        raise data_error(
            "permission denied",
            "make the data readable by this user (chmod/chown), or point data.root elsewhere",
            exc.filename or where,
        ) from None
    except OSError as exc:  # a disk or network filesystem error while reading
        raise data_error(
            f"cannot read {exc.filename or 'the data'} ({exc.strerror or exc})",
            "check the files and the disk, or point data.root elsewhere",
            where,
        ) from None
    except MemoryError:
        raise data_error(
            "the images do not fit in memory",
            "lower data.image_size or data.train_limit, or export to Parquet and stream it",
            where,
            key="data.image_size",
        ) from None
    return check_raw(raw, where)


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load `cfg.source` as in-memory uint8 tensors with a val split fixed by `seed`.

    Args:
        cfg: the data config (source, root, val_fraction, train_fraction, train_limit,
            image_size, ...).
        seed: fixes the val split, the `train_fraction` subset, and the images of `synthetic`.

    Raises:
        ConfigError: missing, empty, corrupt or wrongly formatted data; names `data.root`
            (or the key at fault), the file, what was expected and the fix.
    """
    raw = read_source(cfg, seed)
    train_idx, val_idx = train_rows(raw.train_labels, cfg, seed)
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


# labelled training images of the sources with a fixed size (synthetic: its num_samples)
LABELLED_TRAIN = {
    "digits": 1437,
    "fashion_mnist": 60_000,
    "cifar10": 50_000,
    "cifar100": 50_000,
    "stl10": 5_000,
}


def knn_bank_size(cfg: DataConfig, bank_limit: int | None) -> int | None:
    """Images in the monitoring kNN bank (labelled training images after the val split,
    `train_fraction`, `train_limit` and `bank_limit`), from the source's size; None when known
    only once loaded. With `train_fraction` < 1 it is a lower bound: classes too small for
    their share still keep one image each."""
    labelled = LABELLED_TRAIN.get(cfg.source)
    if cfg.source == "synthetic":
        labelled = cfg.synthetic.num_samples
    if labelled is None:
        return None
    val = min(max(round(cfg.val_fraction * labelled), 1), max(labelled - 1, 0))
    bank = labelled - val
    if cfg.train_fraction < 1:
        bank = max(round(cfg.train_fraction * bank), 1)
    for limit in (cfg.train_limit, bank_limit):  # stl10's labelled rows come first
        if limit is not None:
            bank = min(bank, limit)
    return bank


def knn_bank_problem(
    knn_k: int | list[int], bank: int | None, where: str = "", line: int | None = None
):
    """A Problem when `eval.knn_k` (its largest k) asks for more neighbours than the bank
    holds, else None."""
    from raysl.errors import Problem

    k = max(knn_k) if isinstance(knn_k, list) else knn_k
    if bank is None or k <= bank:
        return None
    return Problem(
        f"{k} neighbours, but the kNN bank holds {bank} labelled training images (after the "
        f"val split, data.train_fraction, train_limit and eval.bank_limit); set eval.knn_k "
        f"<= {bank}{' (every k of the list)' if isinstance(knn_k, list) else ''}",
        key="eval.knn_k",
        where=where,
        line=line,
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
    rng = np.random.default_rng([seed & (2**64 - 1), _SPLIT_STREAM])
    take = _apportion(counts, fraction, n_val, rng)
    val = [rng.permutation(labelled[labels[labelled] == c])[:k] for c, k in zip(classes, take)]
    val_idx = np.sort(np.concatenate(val))
    keep = np.ones(labels.shape[0], dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx


def train_rows(labels: np.ndarray, cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of a source's training split with labels `labels` (N,):
    the val split, then the `train_fraction` subset of the rest, then its first `train_limit`
    rows. Both sorted. `load_splits` and the streamed Parquet plan both use this."""
    train_idx, val_idx = stratified_holdout(labels, cfg.val_fraction, seed)
    if cfg.train_fraction < 1:
        train_idx = train_idx[stratified_subset(labels[train_idx], cfg.train_fraction, seed)]
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    return train_idx, val_idx


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a stratified random `fraction` of `labels` (N,), fixed by `seed`.

    Labelled rows: each class gives floor(fraction * count) rows, the rows left over go to
    the largest remainders (as in `stratified_holdout`), and a class keeps at least one row,
    so each class is within one row of its share. Unlabelled rows (-1, e.g. STL-10's
    unlabeled split) have no classes: a plain random round(fraction * count) of them, at
    least one. The draw uses its own seed stream, so it does not move the val split.
    """
    rng = np.random.default_rng([seed & (2**64 - 1), _FRACTION_STREAM])
    labelled = np.flatnonzero(labels >= 0)
    picked = []
    if labelled.size:
        classes, counts = np.unique(labels[labelled], return_counts=True)
        take = _apportion(counts, fraction, round(fraction * labelled.size), rng)
        take = np.maximum(take, 1)
        for c, k in zip(classes, take):
            picked.append(rng.permutation(labelled[labels[labelled] == c])[:k])
    unlabelled = np.flatnonzero(labels < 0)
    if unlabelled.size:
        n = max(round(fraction * unlabelled.size), 1)
        picked.append(rng.permutation(unlabelled)[:n])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _apportion(counts: np.ndarray, fraction: float, total: int, rng: np.random.Generator):
    """Rows per class (C,) summing to `total`: floor(fraction * count), then one more for
    the classes with the largest remainders, ties broken at random (by `rng`)."""
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    extra = total - int(take.sum())
    order = np.lexsort((rng.random(counts.size), take - quota))
    take[order[: max(extra, 0)]] += 1
    return take


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
