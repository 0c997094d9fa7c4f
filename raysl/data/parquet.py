"""`parquet`: PNG-encoded image shards, and `export_parquet` that writes any source as them.

Layout of an export (`out_dir`):

    _info.json                  # source, num_classes, counts, shape, seed
    train/part-00000.parquet    # columns image (binary PNG), label (int64), index (int64)
    test/part-00000.parquet     # optional

`index` is the row's dataset index; rows are read back ordered by it. The export holds the
source's full training split (before the val split), so reading it back with the same seed
gives exactly the source's splits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raysl.config import DataConfig
from raysl.data.base import Raw, data_error, require_dir
from raysl.data.images import decode_images, encode_png, resize_square
from raysl.errors import ConfigError, Problem

COLUMNS = ("image", "label", "index")
_EXPECTED = "train/ (and optional test/) subdirectories of *.parquet shards with columns image, label, index"
_FIX = "point data.root at a directory written by `raysl data export`"


def load_parquet(cfg: DataConfig, seed: int) -> Raw:
    """Read `cfg.root`/train and `cfg.root`/test shards; `seed` is unused."""
    root = parquet_root(cfg)
    train_images, train_labels = _read_split(root / "train", cfg.image_size, root)
    test_images = test_labels = None
    if (root / "test").is_dir():
        test_images, test_labels = _read_split(root / "test", cfg.image_size, root)
    num_classes = _num_classes(root, train_labels, test_labels)
    return Raw(train_images, train_labels, test_images, test_labels, num_classes)


def _read_split(folder: Path, size: int | None, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) uint8 images and (N,) int64 labels of one split, ordered by `index`."""
    shards = sorted(folder.glob("*.parquet"))
    if not shards:
        raise data_error(
            f"no *.parquet files in {folder.name}/ (expected {_EXPECTED})", _FIX, folder
        )
    blobs: list[bytes] = []
    names: list[str] = []
    labels, indices = [], []
    for shard in shards:
        images, label, index = _read_shard(shard)
        blobs += images
        names += [f"{shard.name} row {row}" for row in range(len(images))]
        labels.append(label)
        indices.append(index)
    index = np.concatenate(indices)
    order = np.argsort(index, kind="stable")
    if np.any(np.diff(index[order]) == 0):
        raise data_error(
            "the index column repeats a value",
            "export again; every row needs its own index",
            folder,
        )
    pixels = decode_images([blobs[i] for i in order], [names[i] for i in order], size, root)
    return pixels, np.concatenate(labels)[order]


def _read_shard(shard: Path) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Encoded images, labels (null -> -1) and indices of one shard, in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(shard).names
        table = pq.read_table(shard, columns=[c for c in COLUMNS if c in names])
    except (pa.ArrowException, OSError) as exc:
        raise data_error(
            f"not a readable Parquet shard ({exc})", "replace the file or export again", shard
        ) from None
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise data_error(
            f"missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})", _FIX, shard
        )
    try:
        label = table.column("label").cast(pa.int64()).fill_null(-1).to_numpy()
        index = table.column("index").cast(pa.int64()).to_numpy()
    except (pa.ArrowException, ValueError) as exc:
        raise data_error(
            f"label and index must be integers without nulls ({exc})", _FIX, shard
        ) from None
    images = table.column("image").to_pylist()
    for row, blob in enumerate(images):
        if not isinstance(blob, bytes):
            raise data_error(
                f"row {row}: image is {type(blob).__name__}, expected encoded PNG bytes",
                _FIX,
                shard,
            )
    return images, label, index


def _num_classes(root: Path, *labels: np.ndarray | None) -> int:
    """From `_info.json` when present, else one more than the largest label."""
    info = root / "_info.json"
    if info.is_file():
        try:
            return int(json.loads(info.read_text())["num_classes"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise data_error(
                f"unreadable _info.json ({exc})", "fix or delete the file", info
            ) from None
    return int(max(int(y.max()) if y is not None and y.size else -1 for y in labels)) + 1


def export_parquet(
    source_cfg: DataConfig,
    out_dir: str | Path,
    seed: int = 0,
    shard_size: int = 10_000,
    overwrite: bool = False,
    on_shard: Callable[[Path, int], None] | None = None,
) -> list[Path]:
    """Write the source's full training split and its test split as PNG Parquet shards.

    Each shard is written to a temporary name and renamed; `_info.json` is written last.
    Images are resized to `source_cfg.image_size` when it is set.

    Args:
        source_cfg: the source to export (any `data.source`, parquet included).
        out_dir: the export directory; must be empty unless `overwrite`.
        seed: the seed the source is read with (only `synthetic` depends on it).
        shard_size: rows per shard.
        overwrite: replace an earlier export's shards and `_info.json` in `out_dir`.
        on_shard: called with (path, rows) after each shard is written.

    Returns:
        The shard paths, train shards first.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysl.data.splits import read_source

    if shard_size < 1:
        raise ConfigError(Problem(f"must be >= 1 (got {shard_size})", key="shard_size"))
    out = Path(out_dir).expanduser()
    if source_cfg.source == "parquet" and source_cfg.root and _same(Path(source_cfg.root), out):
        raise ConfigError(
            Problem("OUT_DIR is the source directory; export to another directory", where=str(out))
        )
    out = _prepare_out_dir(out, overwrite)
    raw = read_source(source_cfg, seed)
    size = source_cfg.image_size
    written: list[Path] = []
    counts: dict[str, int] = {}
    for split, images, labels in (
        ("train", raw.train_images, raw.train_labels),
        ("test", raw.test_images, raw.test_labels),
    ):
        if images is None or labels is None:
            continue
        counts[split] = int(images.shape[0])
        (out / split).mkdir(parents=True, exist_ok=True)
        for shard, start in enumerate(range(0, images.shape[0], shard_size)):
            stop = min(images.shape[0], start + shard_size)
            chunk = resize_square(images[start:stop], size)
            table = pa.table(
                {
                    "image": pa.array([encode_png(image) for image in chunk], pa.binary()),
                    "label": pa.array(labels[start:stop], pa.int64()),
                    "index": pa.array(np.arange(start, stop), pa.int64()),
                }
            )
            path = out / split / f"part-{shard:05d}.parquet"
            _atomic(path, lambda tmp, table=table: pq.write_table(table, tmp))
            written.append(path)
            if on_shard is not None:
                on_shard(path, stop - start)
    shape = list(resize_square(raw.train_images[:1], size).shape[1:])
    info = {
        "source": source_cfg.source,
        "num_classes": raw.num_classes,
        "counts": counts,
        "shape": shape,
        "seed": seed,
    }
    _atomic(out / "_info.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    return written


def _prepare_out_dir(out: Path, overwrite: bool) -> Path:
    """Create `out`, or check it is empty; with `overwrite`, delete an earlier export's files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            Problem("exists and is not a directory; choose another OUT_DIR", where=str(out))
        )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                Problem(
                    "directory is not empty; choose an empty OUT_DIR or overwrite it (--force)",
                    where=str(out),
                )
            )
        for old in [*out.glob("train/*.parquet"), *out.glob("test/*.parquet"), out / "_info.json"]:
            old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same directory (after resolving links)."""
    return a.expanduser().resolve() == b.expanduser().resolve()


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Run `write(tmp)` on a temporary name next to `path`, then rename it to `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- partial reads, for streaming large exports -------------------------------------------
def read_labels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(index, label) of every row of a split, ordered by index, without touching the images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(folder.glob("*.parquet"))
    if not shards:
        raise data_error(
            f"no *.parquet files in {folder.name}/ (expected {_EXPECTED})", _FIX, folder
        )
    try:
        table = pa.concat_tables(pq.read_table(s, columns=["index", "label"]) for s in shards)
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise data_error(f"cannot read the index and label columns ({exc})", _FIX, folder) from None
    index = table.column("index").cast(pa.int64()).to_numpy()
    labels = table.column("label").cast(pa.int64()).fill_null(-1).to_numpy()
    order = np.argsort(index, kind="stable")
    return index[order], labels[order]


def read_rows(
    folder: Path, wanted: np.ndarray, size: int | None, root: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the rows whose index is in `wanted`, ordered by index.

    Only those rows are decoded, shard by shard, so a kNN bank or a val split can be read
    from an export far larger than memory.
    """
    wanted = np.sort(np.asarray(wanted, dtype=np.int64))
    blobs: list[bytes] = []
    names: list[str] = []
    labels, indices = [], []
    for shard in sorted(folder.glob("*.parquet")):
        images, label, index = _read_shard(shard)
        keep = np.flatnonzero(np.isin(index, wanted))
        blobs += [images[i] for i in keep]
        names += [f"{shard.name} row {i}" for i in keep]
        labels.append(label[keep])
        indices.append(index[keep])
    if not blobs:
        raise data_error("none of the wanted rows are in the shards", _FIX, folder)
    index = np.concatenate(indices)
    order = np.argsort(index, kind="stable")
    pixels = decode_images([blobs[i] for i in order], [names[i] for i in order], size, root)
    return pixels, np.concatenate(labels)[order]


def parquet_root(cfg: DataConfig) -> Path:
    """`cfg.root` checked to be an export directory (with train/)."""
    if cfg.root is None:
        raise data_error(
            "the parquet source needs a directory", f"set data.root (expected {_EXPECTED})"
        )
    root = require_dir(Path(cfg.root).expanduser(), _EXPECTED, _FIX)
    if not (root / "train").is_dir():
        raise data_error(f"no train/ subdirectory (expected {_EXPECTED})", _FIX, root)
    return root
