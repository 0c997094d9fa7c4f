"""`imagefolder`: `root/<class>/*.png|jpg|jpeg|bmp|webp`, classes in sorted order.

With `root/train/` the layout is split: `root/train/<class>/...` for training and
`root/test/<class>/...` (or `root/val/...`) as the test split, whose classes must appear in
train. Images are decoded with PIL to RGB (L when every image is grayscale); mixed sizes
need `data.image_size`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysl.config import DataConfig
from raysl.data.base import Raw, data_error, require_dir
from raysl.data.images import decode_images

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_EXPECTED = (
    "<class>/*.png|jpg|jpeg|bmp|webp subdirectories, or train/<class>/... and test/<class>/..."
)
_FIX = "point data.root at a directory of class subdirectories with images"


def load_imagefolder(cfg: DataConfig, seed: int) -> Raw:
    """Every image under `cfg.root`, labelled by its class directory; `seed` is unused."""
    if cfg.root is None:
        raise data_error(
            "the imagefolder source needs a directory", f"set data.root (expected {_EXPECTED})"
        )
    root = require_dir(Path(cfg.root).expanduser(), _EXPECTED, _FIX)
    train_dir, test_dir = root, None
    if (root / "train").is_dir():
        train_dir = root / "train"
        test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    classes = [d.name for d in sorted(train_dir.iterdir()) if d.is_dir() and _images(d)]
    if not classes:
        raise data_error(
            f"no class subdirectories with images in {train_dir} (expected {_EXPECTED})", _FIX, root
        )
    train_files, train_labels = _listing(train_dir, classes, root)
    test_files, test_labels = _listing(test_dir, classes, root) if test_dir else ([], [])
    files = train_files + test_files
    images = decode_images(files, [str(f) for f in files], cfg.image_size, root)
    n = len(train_files)
    return Raw(
        train_images=images[:n],
        train_labels=np.asarray(train_labels, dtype=np.int64),
        test_images=images[n:] if test_dir else None,
        test_labels=np.asarray(test_labels, dtype=np.int64) if test_dir else None,
        num_classes=len(classes),
    )


def _images(folder: Path) -> list[Path]:
    """Image files anywhere below `folder`, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def _listing(folder: Path, classes: list[str], root: Path) -> tuple[list[Path], list[int]]:
    """Files and labels of one split; a data error for a class that train does not have."""
    files: list[Path] = []
    labels: list[int] = []
    index = {name: i for i, name in enumerate(classes)}
    for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
        found = _images(class_dir)
        if found and class_dir.name not in index:
            raise data_error(
                f"class {class_dir.name!r} in {folder.name}/ is not in the training classes ({', '.join(classes)})",
                "give every split the same class directories",
                root,
            )
        files += found
        labels += [index.get(class_dir.name, -1)] * len(found)
    if not files:
        raise data_error(f"no images in {folder} (expected {_EXPECTED})", _FIX, root)
    return files, labels
