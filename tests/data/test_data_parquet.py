"""Parquet export and read-back: same images, labels and splits as the original source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysl.config import DataConfig, SyntheticConfig
from raysl.data import Splits, export_parquet, load_splits
from raysl.errors import ConfigError
from tests.data.data_fakes import write_png, write_stl10


def assert_same(a: Splits, b: Splits) -> None:
    assert (a.test is None) == (b.test is None)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        if x is None:
            continue
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert a.num_classes == b.num_classes and a.mean == b.mean and a.std == b.std


def test_digits_round_trip(tmp_path: Path):
    source = DataConfig(source="digits", val_fraction=0.2)
    shards = export_parquet(source, tmp_path, shard_size=500)
    assert [p.relative_to(tmp_path).as_posix() for p in shards] == [
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "train/part-00002.parquet",
        "test/part-00000.parquet",
    ]
    info = json.loads((tmp_path / "_info.json").read_text())
    assert info["counts"] == {"train": 1437, "test": 360} and info["shape"] == [1, 8, 8]
    assert info["source"] == "digits" and info["num_classes"] == 10
    table = pq.read_table(shards[1])
    assert (
        table.schema.field("image").type == pa.binary()
        and table.schema.field("label").type == pa.int64()
    )
    assert table.column("index").to_pylist()[:2] == [500, 501]
    assert table.column("image")[0].as_py()[:8] == b"\x89PNG\r\n\x1a\n"
    back = DataConfig(source="parquet", root=str(tmp_path), val_fraction=0.2)
    for seed in (0, 5):
        assert_same(load_splits(source, seed), load_splits(back, seed))
    resized = load_splits(DataConfig(source="digits", image_size=12), 0)
    assert_same(
        resized, load_splits(DataConfig(source="parquet", root=str(tmp_path), image_size=12), 0)
    )
    assert not list(tmp_path.rglob("*.tmp"))


def test_synthetic_round_trip_and_row_order(tmp_path: Path):
    source = DataConfig(
        source="synthetic", synthetic=SyntheticConfig(num_classes=4, num_samples=120, image_size=10)
    )
    export_parquet(source, tmp_path, seed=3, shard_size=50)
    # shuffle the rows of a shard: read-back orders rows by `index`
    shard = tmp_path / "train" / "part-00001.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), shard)
    assert_same(
        load_splits(source, 3), load_splits(DataConfig(source="parquet", root=str(tmp_path)), 3)
    )


def test_stl10_export_keeps_unlabelled_rows(tmp_path: Path):
    write_stl10(tmp_path / "stl", n_train=10, n_test=5, n_unlabeled=6)
    source = DataConfig(source="stl10", root=str(tmp_path / "stl"))
    export_parquet(source, tmp_path / "out")
    back = load_splits(DataConfig(source="parquet", root=str(tmp_path / "out")), 0)
    assert (back.train.labels == -1).sum() == 6 and back.num_classes == 10
    assert_same(load_splits(source, 0), back)


def test_export_of_an_imagefolder_with_mixed_sizes(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i, side in enumerate((6, 9, 12)):
        write_png(
            tmp_path / "in" / f"c{i % 2}" / f"{i}.png",
            rng.integers(0, 256, (3, side, side), dtype=np.uint8),
        )
    source = DataConfig(source="imagefolder", root=str(tmp_path / "in"), image_size=8)
    export_parquet(source, tmp_path / "out")
    back = load_splits(DataConfig(source="parquet", root=str(tmp_path / "out")), 0)
    assert back.test is None and back.train.images.shape[1:] == (3, 8, 8)
    assert_same(load_splits(source, 0), back)


def test_export_refuses_a_non_empty_directory_unless_overwrite(tmp_path: Path):
    source = DataConfig(source="synthetic", synthetic=SyntheticConfig(num_samples=40, image_size=8))
    export_parquet(source, tmp_path, shard_size=10)
    assert len(list((tmp_path / "train").iterdir())) == 4
    with pytest.raises(ConfigError, match="not empty"):
        export_parquet(source, tmp_path)
    export_parquet(source, tmp_path, shard_size=100, overwrite=True)
    assert len(list((tmp_path / "train").iterdir())) == 1  # stale shards are gone
    assert len(load_splits(DataConfig(source="parquet", root=str(tmp_path)), 0).train) == 36


def test_parquet_without_info_or_test(tmp_path: Path):
    source = DataConfig(source="digits")
    export_parquet(source, tmp_path)
    (tmp_path / "_info.json").unlink()
    for path in (tmp_path / "test").iterdir():
        path.unlink()
    (tmp_path / "test").rmdir()
    splits = load_splits(DataConfig(source="parquet", root=str(tmp_path)), 0)
    assert splits.test is None and splits.num_classes == 10
