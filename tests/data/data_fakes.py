"""Small stand-ins for each source, written in the real file formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from raysl.data.idx import write_idx


def images(rng: np.random.Generator, n: int, c: int, side: int) -> np.ndarray:
    """(n, c, side, side) random uint8."""
    return rng.integers(0, 256, size=(n, c, side, side), dtype=np.uint8)


def write_fashion(
    root: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0
) -> dict:
    """Fashion-MNIST IDX files (28x28, labels 0..9); returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / (name + suffix), array)
    return arrays


def write_cifar(
    root: Path, source: str = "cifar10", per_batch: int = 20, n_test: int = 20, seed: int = 0
) -> dict:
    """CIFAR-10 (5 batches) or CIFAR-100 pickles as the originals: byte keys, (N, 3072) data."""
    rng = np.random.default_rng(seed)
    classes = 10 if source == "cifar10" else 100
    if source == "cifar10":
        folder, train_names, test_name, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            b"labels",
        )
        meta_name, meta = (
            "batches.meta",
            {b"label_names": [f"c{i}".encode() for i in range(classes)]},
        )
    else:
        folder, train_names, test_name, key = "cifar-100-python", ["train"], "test", b"fine_labels"
        meta_name, meta = "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(classes)]}
        per_batch *= 5
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, n in [*[(t, per_batch) for t in train_names], (test_name, n_test)]:
        data = images(rng, n, 3, 32)
        labels = rng.integers(0, classes, n)
        batch = {b"data": data.reshape(n, -1), key: labels.tolist(), b"batch_label": name.encode()}
        if source == "cifar100":
            batch[b"coarse_labels"] = (labels // 5).tolist()
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    (out / meta_name).write_bytes(pickle.dumps(meta, protocol=2))
    return written


def stl_bytes(array: np.ndarray) -> bytes:
    """STL-10 layout, written from the spec: byte c*96*96 + x*96 + y of an image is pixel (c, y, x)."""
    n = array.shape[0]
    flat = np.empty((n, 3 * 96 * 96), dtype=np.uint8)
    c, y, x = np.meshgrid(np.arange(3), np.arange(96), np.arange(96), indexing="ij")
    flat[:, (c * 96 * 96 + x * 96 + y).reshape(-1)] = array.reshape(n, -1)
    return flat.tobytes()


def write_stl10(
    root: Path, n_train: int = 20, n_test: int = 10, n_unlabeled: int = 15, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    out = root / "stl10_binary"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train": (images(rng, n_train, 3, 96), np.arange(n_train) % 10 + 1),
        "test": (images(rng, n_test, 3, 96), np.arange(n_test) % 10 + 1),
    }
    for split, (x, y) in arrays.items():
        (out / f"{split}_X.bin").write_bytes(stl_bytes(x))
        (out / f"{split}_y.bin").write_bytes(y.astype(np.uint8).tobytes())
    if n_unlabeled:
        unlabeled = images(rng, n_unlabeled, 3, 96)
        (out / "unlabeled_X.bin").write_bytes(stl_bytes(unlabeled))
        arrays["unlabeled"] = (unlabeled, None)
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    """(C, H, W) uint8 -> PNG (L or RGB)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(path)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    query: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    k: int = 200,
    t: float = 0.1,
) -> float:
    """Weighted cosine kNN (Wu et al., 2018) on raw pixels."""
    b = torch.nn.functional.normalize(bank.flatten(1).double(), dim=1)
    q = torch.nn.functional.normalize(query.flatten(1).double(), dim=1)
    sim, idx = (q @ b.T).topk(min(k, b.shape[0]), dim=1)
    scores = torch.zeros(q.shape[0], classes, dtype=torch.double).scatter_add_(
        1, bank_labels[idx], (sim / t).exp()
    )
    return (scores.argmax(1) == labels).double().mean().item()


def indexed_source(cfg, seed):
    """300 images that spell their own row index; labels i % 3, every 10th row unlabelled."""
    from raysl.data.base import Raw

    index = np.arange(300)
    pixels = np.zeros((300, 1, 2, 2), dtype=np.uint8)
    pixels[:, 0, 0, 0], pixels[:, 0, 0, 1] = index // 256, index % 256
    labels = np.where(index % 10 == 9, -1, index % 3).astype(np.int64)
    return Raw(pixels, labels, None, None, num_classes=3)


def row_index(images: torch.Tensor) -> np.ndarray:
    """Invert `indexed_source`: the dataset index of each image."""
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).numpy()
