"""Bad input gives one ConfigError that names the key (data.root), the file and the fix."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysl.config import DataConfig
from raysl.data import export_parquet, load_splits
from raysl.data.idx import write_idx
from raysl.errors import ConfigError
from tests.data.data_fakes import write_cifar, write_fashion, write_png, write_stl10


def load_error(source: str, root: Path | None, key: str = "data.root", **kwargs) -> str:
    """Load and return the error text; check it names `key` and gives a fix."""
    cfg = DataConfig(source=source, root=None if root is None else str(root), **kwargs)
    with pytest.raises(ConfigError) as info:
        load_splits(cfg, seed=0)
    problems = info.value.problems
    assert len(problems) == 1 and problems[0].key == key
    text = str(info.value)
    assert "fix:" in text and "\n" not in text
    return text


# ---- fashion_mnist ----------------------------------------------------------------------
def test_fashion_missing_directory_lists_the_fixes(tmp_path: Path):
    text = load_error("fashion_mnist", tmp_path / "nowhere")
    assert "does not exist" in text and "train-images-idx3-ubyte" in text
    assert "apt-get install -y dataset-fashion-mnist" in text and "data.download: true" in text


def test_fashion_empty_directory(tmp_path: Path):
    assert "missing Fashion-MNIST file(s)" in load_error("fashion_mnist", tmp_path)


def test_fashion_bad_magic(tmp_path: Path):
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    text = load_error("fashion_mnist", tmp_path)
    assert "train-images-idx3-ubyte" in text and "magic number 12345678" in text


def test_fashion_labels_where_images_belong(tmp_path: Path):
    write_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros(20, dtype=np.uint8))
    assert "1 dimension(s), expected 3" in load_error("fashion_mnist", tmp_path)


def test_fashion_truncated_and_bad_gzip(tmp_path: Path):
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    assert "truncated" in load_error("fashion_mnist", tmp_path)
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert "cannot read the file" in load_error("fashion_mnist", tmp_path)


def test_fashion_count_mismatch(tmp_path: Path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    assert "60 train images but 7 labels" in load_error("fashion_mnist", tmp_path)


def test_fashion_download_failure_names_data_download(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    text = load_error("fashion_mnist", tmp_path, key="data.download", download=True)
    assert "network is unreachable" in text


def test_fashion_download_writes_where_the_reader_looks(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    def fake_download(root, train=True, download=False):
        write_fashion(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    splits = load_splits(DataConfig(source="fashion_mnist", root=str(tmp_path), download=True), 0)
    assert len(splits.test) == 20


# ---- cifar ------------------------------------------------------------------------------
def test_cifar_missing(tmp_path: Path):
    text = load_error("cifar10", tmp_path)
    assert "cifar-10-batches-py" in text and "data.download: true" in text


def test_cifar_corrupt_pickle(tmp_path: Path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    assert "data_batch_3" in load_error("cifar10", tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path: Path):
    write_cifar(tmp_path, "cifar100")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({b"data": Evil()}))
    assert "is not allowed" in load_error("cifar100", tmp_path)
    assert not marker.exists()


def test_cifar_wrong_content(tmp_path: Path):
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    assert "expected a dict" in load_error("cifar10", tmp_path)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    assert "expected (N, 3072)" in load_error("cifar10", tmp_path)


# ---- stl10 ------------------------------------------------------------------------------
def test_stl10_missing_and_truncated(tmp_path: Path):
    assert "stl10_binary" in load_error("stl10", tmp_path)
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    assert "multiple of 27648" in load_error("stl10", tmp_path)


def test_stl10_bad_labels(tmp_path: Path):
    write_stl10(tmp_path, n_unlabeled=0)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([0] * 20))
    assert "labels must be 1..10" in load_error("stl10", tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1] * 3))
    assert "20 images in train_X.bin but 3 labels" in load_error("stl10", tmp_path)


# ---- imagefolder ------------------------------------------------------------------------
def test_imagefolder_needs_a_directory_with_classes(tmp_path: Path):
    assert "set data.root" in load_error("imagefolder", None)
    assert "does not exist" in load_error("imagefolder", tmp_path / "nowhere")
    assert "is empty" in load_error("imagefolder", tmp_path)
    write_png(tmp_path / "loose.png", np.zeros((1, 4, 4), np.uint8))
    assert "no class subdirectories" in load_error("imagefolder", tmp_path)


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path):
    write_png(tmp_path / "a" / "ok.png", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG but not really")
    assert "broken.png" in load_error("imagefolder", tmp_path)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path):
    write_png(tmp_path / "a" / "0.png", np.zeros((3, 4, 4), np.uint8))
    write_png(tmp_path / "b" / "1.png", np.zeros((3, 6, 5), np.uint8))
    assert "data.image_size" in load_error("imagefolder", tmp_path, key="data.image_size")


def test_imagefolder_unknown_test_class(tmp_path: Path):
    write_png(tmp_path / "train" / "a" / "0.png", np.zeros((3, 4, 4), np.uint8))
    write_png(tmp_path / "test" / "z" / "0.png", np.zeros((3, 4, 4), np.uint8))
    assert "class 'z'" in load_error("imagefolder", tmp_path)


# ---- parquet ----------------------------------------------------------------------------
def test_parquet_layout_errors(tmp_path: Path):
    assert "set data.root" in load_error("parquet", None)
    assert "does not exist" in load_error("parquet", tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    assert "no train/ subdirectory" in load_error("parquet", tmp_path)
    (tmp_path / "train").mkdir()
    assert "no *.parquet files" in load_error("parquet", tmp_path)


def test_parquet_bad_shards(tmp_path: Path):
    shard = tmp_path / "train" / "part-00000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1 garbage")
    assert "not a readable Parquet shard" in load_error("parquet", tmp_path)
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), shard)
    assert "missing column(s) index" in load_error("parquet", tmp_path)
    pq.write_table(pa.table({"image": [b"x", b"y"], "label": [0, 1], "index": [3, 3]}), shard)
    assert "repeats" in load_error("parquet", tmp_path)
    pq.write_table(
        pa.table({"image": pa.array([None], pa.binary()), "label": [0], "index": [0]}), shard
    )
    assert "row 0" in load_error("parquet", tmp_path)
    pq.write_table(pa.table({"image": [b"not a png"], "label": [0], "index": [0]}), shard)
    assert "part-00000.parquet row 0" in load_error("parquet", tmp_path)


def test_export_into_a_file_is_an_error(tmp_path: Path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        export_parquet(DataConfig(source="digits"), target)


def test_export_onto_its_own_source_is_an_error(tmp_path: Path):
    export_parquet(DataConfig(source="digits"), tmp_path)
    with pytest.raises(ConfigError, match="OUT_DIR is the source directory"):
        export_parquet(DataConfig(source="parquet", root=str(tmp_path)), tmp_path, overwrite=True)
    assert len(load_splits(DataConfig(source="parquet", root=str(tmp_path)), 0).test) == 360


def test_gz_helper_is_really_gzip(tmp_path: Path):
    path = write_idx(tmp_path / "x.gz", np.zeros(3, np.uint8))
    assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 8, 1])
