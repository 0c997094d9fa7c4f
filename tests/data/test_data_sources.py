"""Each source read from small stand-ins written in the real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raysl.config import DataConfig
from raysl.data import load_splits
from raysl.data.idx import read_idx, write_idx
from raysl.data.splits import read_source
from tests.data.data_fakes import stl_bytes, write_cifar, write_fashion, write_png, write_stl10


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64, np.int8])
def test_idx_round_trip(tmp_path: Path, gz: bool, dtype):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_header_is_the_mnist_format(tmp_path: Path):
    path = write_idx(tmp_path / "labels", np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])  # magic 0x00000801, N=3


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_stand_in(tmp_path: Path, gz: bool):
    arrays = write_fashion(tmp_path, n_train=60, n_test=20, gz=gz)
    splits = load_splits(
        DataConfig(source="fashion_mnist", root=str(tmp_path), val_fraction=0.1), seed=0
    )
    assert splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54, 6, 20)
    assert splits.train.images.shape[1:] == (1, 28, 28)
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(
        splits.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    )
    assert splits.val.labels.unique().numel() == 6  # 6 of the 10 classes give one image each


def test_fashion_mnist_in_torchvision_layout(tmp_path: Path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    raw = read_source(DataConfig(source="fashion_mnist", root=str(tmp_path)), 0)
    assert raw.train_images.shape == (60, 1, 28, 28)


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_cifar_stand_in(tmp_path: Path, source: str):
    written = write_cifar(tmp_path, source, per_batch=20, n_test=30)
    splits = load_splits(DataConfig(source=source, root=str(tmp_path), val_fraction=0.1), seed=0)
    assert splits.num_classes == (10 if source == "cifar10" else 100)
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 30
    assert splits.train.images.shape[1:] == (3, 32, 32)
    test_data, test_labels = written["test_batch" if source == "cifar10" else "test"]
    assert torch.equal(splits.test.images, torch.from_numpy(test_data))
    assert torch.equal(splits.test.labels, torch.from_numpy(test_labels))
    # the training split is the batches in order: batch 1 row 0 is dataset index 0
    raw = read_source(DataConfig(source=source, root=str(tmp_path)), 0)
    first = written["data_batch_1" if source == "cifar10" else "train"][0]
    assert np.array_equal(raw.train_images[:20], first[:20])


def test_cifar_root_may_be_the_batches_directory(tmp_path: Path):
    write_cifar(tmp_path)
    raw = read_source(DataConfig(source="cifar10", root=str(tmp_path / "cifar-10-batches-py")), 0)
    assert raw.train_images.shape == (100, 3, 32, 32)


def test_stl10_column_major_known_image(tmp_path: Path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    image = np.zeros((1, 3, 96, 96), dtype=np.uint8)
    image[0, 0, 0, 5] = 255  # red, row 0, column 5
    image[0, 2, 90, 1] = 77  # blue, row 90, column 1
    raw_bytes = bytearray(3 * 96 * 96)
    raw_bytes[0 * 9216 + 5 * 96 + 0] = 255  # the spec: channel plane, then column x, then row y
    raw_bytes[2 * 9216 + 1 * 96 + 90] = 77
    assert stl_bytes(image) == bytes(raw_bytes)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(bytes(raw_bytes))
        (folder / f"{split}_y.bin").write_bytes(bytes([10]))
    raw = read_source(DataConfig(source="stl10", root=str(tmp_path)), 0)
    assert np.array_equal(np.asarray(raw.train_images), image)
    assert raw.train_labels.tolist() == [9]  # 1..10 -> 0..9


def test_stl10_stand_in_with_unlabeled(tmp_path: Path):
    arrays = write_stl10(tmp_path, n_train=20, n_test=10, n_unlabeled=15)
    splits = load_splits(DataConfig(source="stl10", root=str(tmp_path), val_fraction=0.1), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (33, 2, 10)
    assert (splits.train.labels == -1).sum() == 15 and torch.all(splits.val.labels >= 0)
    assert torch.equal(splits.train.images[-15:], torch.from_numpy(arrays["unlabeled"][0]))
    assert torch.equal(splits.test.images, torch.from_numpy(arrays["test"][0]))
    assert torch.equal(splits.test.labels, torch.from_numpy(arrays["test"][1] - 1))


def test_imagefolder_flat(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = {}
    for cls in ("zebra", "ant", "cat"):
        for i in range(4):
            rgb[(cls, i)] = rng.integers(0, 256, (3, 10, 10), dtype=np.uint8)
            write_png(tmp_path / cls / f"{i}.png", rgb[(cls, i)])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    splits = load_splits(
        DataConfig(source="imagefolder", root=str(tmp_path), val_fraction=0.25), seed=0
    )
    assert splits.num_classes == 3 and splits.test is None
    assert splits.train.images.shape[1:] == (3, 10, 10)
    assert torch.bincount(splits.val.labels).tolist() == [1, 1, 1]
    raw = read_source(DataConfig(source="imagefolder", root=str(tmp_path)), 0)
    assert raw.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # ant, cat, zebra
    assert np.array_equal(raw.train_images[8], rgb[("zebra", 0)])


def test_imagefolder_split_grayscale_and_mixed_sizes(tmp_path: Path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                side = 8 + 4 * i  # mixed sizes
                write_png(
                    tmp_path / split / cls / f"{i}.png",
                    rng.integers(0, 256, (1, side, side), dtype=np.uint8),
                )
    splits = load_splits(
        DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.4), seed=0
    )
    assert splits.train.images.shape[1:] == (1, 8, 8)  # all grayscale -> one channel
    assert len(splits.test) == 4 and splits.test.labels.tolist() == [0, 0, 1, 1]
    assert len(splits.train) + len(splits.val) == 6


def test_imagefolder_mixed_modes_become_rgb(tmp_path: Path):
    gray = np.full((1, 6, 6), 100, dtype=np.uint8)
    write_png(tmp_path / "a" / "g.png", gray)
    write_png(tmp_path / "b" / "c.png", np.zeros((3, 6, 6), dtype=np.uint8))
    from PIL import Image

    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / "b" / "j.jpg")
    raw = read_source(DataConfig(source="imagefolder", root=str(tmp_path)), 0)
    assert raw.train_images.shape == (3, 3, 6, 6)
    assert np.all(raw.train_images[0] == 100)


def test_image_size_on_a_native_source(tmp_path: Path):
    write_cifar(tmp_path, per_batch=2, n_test=4)
    splits = load_splits(DataConfig(source="cifar10", root=str(tmp_path), image_size=16), seed=0)
    assert splits.train.images.shape[1:] == splits.test.images.shape[1:] == (3, 16, 16)
