"""`stl10`: the binary release (`stl10_binary/`), 3x96x96 images stored column-major.

Files: `train_X.bin` + `train_y.bin` (5,000 labelled), `test_X.bin` + `test_y.bin`
(8,000), `unlabeled_X.bin` (100,000). Each image is 3 planes of 96x96 bytes, every plane
column by column, so a file reshapes to (N, C, W, H) and is transposed to (N, C, H, W).
Labels are bytes 1..10, read as 0..9. The training split is train followed by unlabeled
(label -1); without `unlabeled_X.bin` it is train alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysl.config import DataConfig
from raysl.data.base import Raw, cache_dir, data_error, missing_dir

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
FOLDER = "stl10_binary"
REQUIRED = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def load_stl10(cfg: DataConfig, seed: int) -> Raw:
    """Train (+ unlabeled) and test images, 3x96x96, 10 classes; `seed` is unused."""
    root = Path(cfg.root).expanduser() if cfg.root else cache_dir("stl10")
    folder = _folder(root)
    if folder is None and cfg.download:
        from raysl.data.download import download

        download("stl10", root)
        folder = _folder(root)
    if folder is None:
        raise data_error(
            f"{missing_dir(root)}no STL-10 binaries in {root} (expected {FOLDER}/ with {', '.join(REQUIRED)} and unlabeled_X.bin)",
            f"set data.root to the directory that holds {FOLDER}/, or set data.download: true when online",
            root,
        )
    train_images, train_labels = (
        read_images(folder / "train_X.bin"),
        read_labels(folder / "train_y.bin"),
    )
    test_images, test_labels = (
        read_images(folder / "test_X.bin"),
        read_labels(folder / "test_y.bin"),
    )
    for images, labels, name in (
        (train_images, train_labels, "train"),
        (test_images, test_labels, "test"),
    ):
        if images.shape[0] != labels.shape[0]:
            raise data_error(
                f"{images.shape[0]} images in {name}_X.bin but {labels.shape[0]} labels",
                "use matching files",
                folder / f"{name}_y.bin",
            )
    if (folder / "unlabeled_X.bin").is_file():
        unlabeled = read_images(folder / "unlabeled_X.bin")
        train_images = np.concatenate([train_images, unlabeled])
        train_labels = np.concatenate(
            [train_labels, np.full(unlabeled.shape[0], -1, dtype=np.int64)]
        )
    return Raw(train_images, train_labels, test_images, test_labels, num_classes=10)


def _folder(root: Path) -> Path | None:
    for folder in (root / FOLDER, root):
        if all((folder / name).is_file() for name in REQUIRED):
            return folder
    return None


def read_images(path: Path) -> np.ndarray:
    """(N, 3, 96, 96) uint8, a transposed view of a read-only memory map of `path`."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise data_error(
            f"file is {size} bytes, expected a multiple of {IMAGE_BYTES} (3x96x96 images)",
            "the file is truncated or not STL-10; replace it",
            path,
        )
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // IMAGE_BYTES, 3, SIDE, SIDE))
    return mapped.transpose(0, 1, 3, 2)  # stored (N, C, W, H): column-major planes


def read_labels(path: Path) -> np.ndarray:
    """(N,) int64 in 0..9 from bytes 1..10."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise data_error(
            f"labels must be 1..10, found {labels.min()}..{labels.max()}", "replace the file", path
        )
    return labels - 1
