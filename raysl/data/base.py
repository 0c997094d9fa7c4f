"""The data contract: `ImageSet`, `Splits`, what a source returns (`Raw`), and data errors.

Every source turns its files into `Raw`: numpy uint8 arrays (N, C, H, W), possibly
memory-mapped, with int64 labels (-1 = unknown). `raysl.data.splits.load_splits` then takes
the val split, applies `train_limit` and `image_size`, and hands out torch tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from raysl.errors import ConfigError, Problem


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split, in memory.

    Args:
        images: (N, C, H, W) uint8, CPU, contiguous.
        labels: (N,) int64; -1 where the label is unknown (e.g. STL-10 unlabeled).
    """

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Splits:
    """A source split for self-supervised training, monitoring and final reporting.

    `train` row i has dataset index i (the instance id). `val` is a stratified, seeded
    sample of the source's labelled training images and never overlaps `train`. `test` is
    the source's own test split, only for final reporting. `mean`/`std` are per channel,
    of the `train` images scaled to [0, 1].
    """

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Raw:
    """What a source provides before splitting: its full train split and its test split.

    Arrays are numpy so large files can stay memory-mapped until rows are picked.
    """

    train_images: np.ndarray  # (N, C, H, W) uint8
    train_labels: np.ndarray  # (N,) int64, -1 = unknown
    test_images: np.ndarray | None  # (M, C, H, W) uint8
    test_labels: np.ndarray | None  # (M,) int64
    num_classes: int


# ---- errors and paths -------------------------------------------------------------------
def data_error(
    message: str, fix: str, where: str | Path = "", key: str = "data.root"
) -> ConfigError:
    """A ConfigError for bad data input: what is wrong or expected, then the fix."""
    return ConfigError(Problem(f"{message}; fix: {fix}", key=key, where=str(where)))


def cache_dir(source: str) -> Path:
    """Where raysl downloads a source by default: `~/.cache/raysl/<source>`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "raysl" / source


def find_file(dirs: Iterable[Path], names: Sequence[str]) -> Path | None:
    """The first existing file among `dir/name` for each dir, then each name."""
    for folder in dirs:
        for name in names:
            path = folder / name
            if path.is_file():
                return path
    return None


def missing_dir(root: Path) -> str:
    """A phrase for error messages when `root` is missing or not a directory; else ""."""
    if not root.exists():
        return f"directory {root} does not exist; "
    return "" if root.is_dir() else f"{root} is not a directory; "


def require_dir(root: Path, what: str, fix: str) -> Path:
    """`root`, or a data error if it is missing, not a directory or empty."""
    if not root.exists():
        raise data_error(f"directory does not exist (expected {what})", fix, root)
    if not root.is_dir():
        raise data_error(f"not a directory (expected {what})", fix, root)
    if not any(root.iterdir()):
        raise data_error(f"directory is empty (expected {what})", fix, root)
    return root


def read_bytes(path: Path) -> bytes:
    """A file's bytes, transparently gunzipped when the name ends in .gz."""
    import gzip

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise data_error(
            f"cannot read the file ({exc})", "replace the file with a good copy", path
        ) from None


def check_raw(raw: Raw, where: str | Path) -> Raw:
    """Shapes, dtypes and label ranges agree; a data error otherwise."""
    for split, images, labels in (
        ("train", raw.train_images, raw.train_labels),
        ("test", raw.test_images, raw.test_labels),
    ):
        if images is None or labels is None:
            continue
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise data_error(
                f"{split} images must be uint8 (N, 1|3, H, W), got {images.dtype} {images.shape}",
                "check the files",
                where,
            )
        if labels.shape != (images.shape[0],):
            raise data_error(
                f"{split}: {images.shape[0]} images but {labels.shape[0]} labels",
                "check the files",
                where,
            )
        if labels.size and (labels.min() < -1 or labels.max() >= raw.num_classes):
            raise data_error(
                f"{split} labels must be in [0, {raw.num_classes}) or -1, got {labels.min()}..{labels.max()}",
                "check the files",
                where,
            )
    if raw.train_images.shape[0] == 0:
        raise data_error("the training split is empty", "point data.root at the data", where)
    if raw.test_images is not None and raw.test_images.shape[1:] != raw.train_images.shape[1:]:
        raise data_error(
            f"test images are {raw.test_images.shape[1:]}, train images {raw.train_images.shape[1:]}",
            "set data.image_size",
            where,
        )
    return raw
