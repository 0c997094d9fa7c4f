"""IDX files (MNIST format) and the `fashion_mnist` source.

An IDX file is: two zero bytes, a type byte (0x08 = uint8, ...), a byte with the number of
dimensions, one big-endian uint32 per dimension, then the values in C order, big-endian.
Files ending in `.gz` are gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from raysl.config import DataConfig
from raysl.data.base import Raw, cache_dir, data_error, find_file, missing_dir, read_bytes

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FIX = (
    "apt-get install -y dataset-fashion-mnist, or set data.root to a directory with the four "
    "IDX files, or set data.download: true when online"
)


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """The array in an IDX file (raw or .gz), native byte order; a data error if malformed."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in DTYPES:
        magic = data[:4].hex() or "nothing"
        raise data_error(
            f"not an IDX file (magic number {magic}, expected 0000TTNN)", "replace the file", path
        )
    kind, dims = data[2], data[3]
    if ndim is not None and dims != ndim:
        raise data_error(
            f"IDX file has {dims} dimension(s), expected {ndim}", "check which file this is", path
        )
    header = 4 + 4 * dims
    shape = struct.unpack(f">{dims}I", data[4:header]) if len(data) >= header else ()
    dtype = np.dtype(DTYPES[kind])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < header or len(data) != expected:
        raise data_error(
            f"IDX file is {len(data)} bytes, its header says {expected}",
            "the file is truncated; replace it",
            path,
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` (uint8, int8, int16, int32, float32 or float64) as IDX; gzip if `.gz`."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot hold {array.dtype}; use one of {', '.join(DTYPES.values())}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).astype(DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def load_fashion_mnist(cfg: DataConfig, seed: int) -> Raw:
    """60,000 train and 10,000 test images, 1x28x28, 10 classes; `seed` is unused."""
    roots = [Path(cfg.root).expanduser()] if cfg.root else [DEBIAN_ROOT, cache_dir("fashion_mnist")]
    found = _find(roots)
    if None in found.values() and cfg.download:
        from raysl.data.download import download

        download("fashion_mnist", roots[0] if cfg.root else roots[1])
        found = _find(roots)
    missing = [FILES[key] + "[.gz]" for key, path in found.items() if path is None]
    if missing:
        where = " or ".join(str(r) for r in roots)
        raise data_error(
            f"{missing_dir(roots[0]) if cfg.root else ''}missing Fashion-MNIST file(s) {', '.join(missing)} in {where}",
            _FIX,
            roots[0],
        )
    paths: dict[str, Path] = {key: path for key, path in found.items() if path is not None}
    images = {split: read_idx(paths[f"{split}_images"], ndim=3) for split in ("train", "test")}
    labels = {split: read_idx(paths[f"{split}_labels"], ndim=1) for split in ("train", "test")}
    for split in ("train", "test"):
        if images[split].dtype != np.uint8 or labels[split].dtype != np.uint8:
            raise data_error(
                f"{split} IDX files must hold uint8 values",
                "replace the files",
                paths[f"{split}_images"],
            )
        if images[split].shape[0] != labels[split].shape[0]:
            raise data_error(
                f"{images[split].shape[0]} {split} images but {labels[split].shape[0]} labels",
                "use matching files",
                paths[f"{split}_labels"],
            )
    return Raw(
        train_images=images["train"][:, None],  # (N, 1, 28, 28)
        train_labels=labels["train"].astype(np.int64),
        test_images=images["test"][:, None],
        test_labels=labels["test"].astype(np.int64),
        num_classes=10,
    )


def _find(roots: list[Path]) -> dict[str, Path | None]:
    """The four files from the first directory that has all of them (raw or gzipped).

    Looks in each root and in torchvision's `FashionMNIST/raw` below it; when none is
    complete, the files of the most complete one (None for those missing).
    """
    dirs = [d for root in roots for d in (root, root / "FashionMNIST" / "raw")]
    options = [
        {key: find_file([d], [name, name + ".gz"]) for key, name in FILES.items()} for d in dirs
    ]
    return max(options, key=lambda found: sum(path is not None for path in found.values()))
