"""`cifar10` and `cifar100`: the python-pickle batches, read without torchvision.

CIFAR-10: `cifar-10-batches-py/data_batch_1..5`, `test_batch`, `batches.meta`.
CIFAR-100: `cifar-100-python/train`, `test`, `meta` (the 100 `fine_labels` are used).
Each batch is a pickled dict with `data` ((N, 3072) uint8, channel-major 3x32x32) and the
labels. Unpickling allows only the numpy globals these files need.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raysl.config import DataConfig
from raysl.data.base import Raw, cache_dir, data_error, missing_dir


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    labels: str  # key of the label list in a batch
    meta: str
    names: str  # key of the class names in the meta file
    classes: int  # when there is no meta file


LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "batches.meta",
        "label_names",
        10,
    ),
    "cifar100": _Layout(
        "cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names", 100
    ),
}
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


def load_cifar10(cfg: DataConfig, seed: int) -> Raw:
    """50,000 train and 10,000 test images, 3x32x32, 10 classes; `seed` is unused."""
    return _load("cifar10", cfg)


def load_cifar100(cfg: DataConfig, seed: int) -> Raw:
    """50,000 train and 10,000 test images, 3x32x32, 100 fine classes; `seed` is unused."""
    return _load("cifar100", cfg)


def _load(source: str, cfg: DataConfig) -> Raw:
    layout = LAYOUTS[source]
    root = Path(cfg.root).expanduser() if cfg.root else cache_dir(source)
    folder = _folder(root, layout)
    if folder is None and cfg.download:
        from raysl.data.download import download

        download(source, root)
        folder = _folder(root, layout)
    if folder is None:
        files = ", ".join((*layout.train, *layout.test))
        raise data_error(
            f"{missing_dir(root)}no {source} batches in {root} (expected {layout.folder}/ with {files})",
            f"set data.root to the directory that holds {layout.folder}/, or set data.download: true when online",
            root,
        )
    train = [_batch(folder / name, layout) for name in layout.train]
    test = [_batch(folder / name, layout) for name in layout.test]
    classes = layout.classes
    if (folder / layout.meta).is_file():
        names = _unpickle(folder / layout.meta).get(layout.names)
        if not isinstance(names, list) or not names:
            raise data_error(
                f"meta file has no {layout.names} list", "replace the file", folder / layout.meta
            )
        classes = len(names)
    return Raw(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=np.concatenate([images for images, _ in test]),
        test_labels=np.concatenate([labels for _, labels in test]),
        num_classes=classes,
    )


def _folder(root: Path, layout: _Layout) -> Path | None:
    """`root/<folder>` or `root` itself, whichever holds every batch file."""
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in (*layout.train, *layout.test)):
            return folder
    return None


def _batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels of one batch file."""
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get(layout.labels)
    if (
        not isinstance(data, np.ndarray)
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels is None
    ):
        shape = getattr(data, "shape", type(data).__name__)
        raise data_error(
            f"not a CIFAR batch (data is {shape}, expected (N, 3072) uint8 with '{layout.labels}')",
            "replace the file",
            path,
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise data_error(
            f"{data.shape[0]} images but {labels.size} labels", "replace the file", path
        )
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


class _Unpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a batch cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy 2 warns on numpy.core
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """A pickled dict with str keys (the files are Python 2 pickles with byte strings)."""
    try:
        with path.open("rb") as handle:
            obj = _Unpickler(handle, encoding="bytes").load()
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
    ) as exc:
        raise data_error(
            f"not a readable CIFAR pickle ({type(exc).__name__}: {exc})",
            "replace the file with a good copy",
            path,
        ) from None
    if not isinstance(obj, dict):
        raise data_error(
            f"not a CIFAR pickle (holds a {type(obj).__name__}, expected a dict)",
            "replace the file",
            path,
        )
    return {
        key.decode("latin1") if isinstance(key, bytes) else str(key): value
        for key, value in obj.items()
    }
