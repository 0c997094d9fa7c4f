"""Split rules: disjoint, stratified, seeded, train_limit, image_size, mean/std, tensor contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysl.config import DataConfig, SyntheticConfig
from raysl.data import ImageSet, Splits, load_splits
from raysl.data.splits import LOADERS, channel_stats, stratified_holdout
from tests.data.data_fakes import knn_accuracy, row_index

SMALL = SyntheticConfig(num_classes=5, num_samples=400, image_size=12, channels=3)


def synthetic(**kwargs) -> DataConfig:
    return DataConfig(source="synthetic", synthetic=kwargs.pop("synthetic", SMALL), **kwargs)


def check_contract(splits: Splits) -> None:
    for part in (splits.train, splits.val, splits.test):
        assert isinstance(part, ImageSet)
        assert part.images.dtype == torch.uint8 and part.images.ndim == 4
        assert part.images.is_contiguous() and part.images.device.type == "cpu"
        assert part.labels.dtype == torch.int64 and part.labels.shape == (part.images.shape[0],)
        assert int(part.labels.max()) < splits.num_classes
    assert (
        splits.train.images.shape[1:] == splits.val.images.shape[1:] == splits.test.images.shape[1:]
    )
    assert len(splits.mean) == len(splits.std) == splits.train.images.shape[1]


def test_holdout_is_disjoint_stratified_and_sorted():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    labels = np.concatenate([labels, np.full(40, -1)])  # unlabelled rows never go to val
    train, val = stratified_holdout(labels, 0.1, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).size == labels.size
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.all(labels[val] >= 0)
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 5, 3, 2]


def test_holdout_rounds_to_the_requested_fraction():
    labels = np.repeat(np.arange(3), [7, 7, 7])
    _, val = stratified_holdout(labels, 0.2, seed=0)
    assert val.size == round(0.2 * 21)
    assert (
        np.bincount(labels[val], minlength=3).max() - np.bincount(labels[val], minlength=3).min()
        <= 1
    )


def test_holdout_is_fixed_by_seed():
    labels = np.arange(1000) % 10
    a = stratified_holdout(labels, 0.1, seed=7)[1]
    b = stratified_holdout(labels, 0.1, seed=7)[1]
    c = stratified_holdout(labels, 0.1, seed=8)[1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # pinned: the split must not change between machines or raysl versions (numpy PCG64)
    assert a[:8].tolist() == [12, 20, 22, 23, 26, 54, 60, 69]


def test_synthetic_splits_contract_and_sizes():
    splits = load_splits(synthetic(val_fraction=0.2), seed=0)
    check_contract(splits)
    assert splits.name == "synthetic" and splits.num_classes == 5
    assert (len(splits.train), len(splits.val), len(splits.test)) == (320, 80, 100)
    assert splits.train.images.shape[1:] == (3, 12, 12)
    assert torch.bincount(splits.val.labels).tolist() == [16] * 5


def test_same_seed_same_splits_other_seed_other_split():
    a, b = load_splits(synthetic(), seed=1), load_splits(synthetic(), seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    cfg = DataConfig(source="digits")
    d1, d2 = load_splits(cfg, seed=1), load_splits(cfg, seed=2)
    assert torch.equal(d1.test.images, d2.test.images)  # the test split never moves
    assert not torch.equal(d1.val.images, d2.val.images)


def test_rows_keep_dataset_order_and_val_never_overlaps_train(monkeypatch):
    monkeypatch.setitem(LOADERS, "digits", ("tests.data.data_fakes", "indexed_source"))
    splits = load_splits(DataConfig(source="digits", val_fraction=0.2), seed=0)
    train, val = row_index(splits.train.images), row_index(splits.val.images)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.union1d(train, val), np.arange(300))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # the source's order
    assert torch.equal(
        splits.train.labels, torch.from_numpy(np.where(train % 10 == 9, -1, train % 3))
    )
    assert torch.all(splits.val.labels >= 0)  # unlabelled rows stay in train
    assert torch.bincount(splits.val.labels).tolist() == [18, 18, 18]  # 20 % of 270 labelled
    assert splits.test is None
    limited = load_splits(DataConfig(source="digits", val_fraction=0.2, train_limit=10), seed=0)
    assert np.array_equal(row_index(limited.train.images), train[:10])


def test_digits_is_the_documented_split():
    splits = load_splits(DataConfig(source="digits"), seed=0)
    assert splits.train.images.shape[1:] == (1, 8, 8) and splits.num_classes == 10
    assert int(splits.train.images.max()) == 255 and int(splits.train.images.min()) == 0
    bank = torch.cat([splits.train.images, splits.val.images]).float()
    bank_labels = torch.cat([splits.train.labels, splits.val.labels])
    accuracy = knn_accuracy(
        bank, bank_labels, splits.test.images.float(), splits.test.labels, classes=10
    )
    assert accuracy == pytest.approx(0.9278, abs=1e-4)


def test_train_limit_keeps_the_first_images_after_val():
    full = load_splits(synthetic(), seed=0)
    limited = load_splits(synthetic(train_limit=50), seed=0)
    assert torch.equal(limited.train.images, full.train.images[:50])
    assert torch.equal(limited.val.images, full.val.images)


def test_image_size_resizes_every_split():
    splits = load_splits(DataConfig(source="digits", image_size=16), seed=0)
    check_contract(splits)
    assert splits.train.images.shape[1:] == splits.test.images.shape[1:] == (1, 16, 16)


def test_mean_std_are_of_the_train_split():
    splits = load_splits(synthetic(), seed=0)
    x = splits.train.images.double() / 255
    assert splits.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert splits.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert channel_stats(torch.full((2, 1, 3, 3), 255, dtype=torch.uint8)) == ((1.0,), (0.0,))


def test_synthetic_has_learnable_but_imperfect_class_structure():
    spec = SyntheticConfig()  # the defaults: 10 classes, 2048 images, 16 px, RGB
    splits = load_splits(DataConfig(source="synthetic", synthetic=spec), seed=0)
    accuracy = knn_accuracy(
        splits.train.images.float(),
        splits.train.labels,
        splits.test.images.float(),
        splits.test.labels,
        classes=10,
    )
    assert 0.3 < accuracy < 0.9
    assert torch.bincount(splits.test.labels).tolist() == [
        512 // 10 + (i < 512 % 10) for i in range(10)
    ]
    other = load_splits(DataConfig(source="synthetic", synthetic=spec), seed=1)
    assert not torch.equal(other.train.images, splits.train.images)


def test_synthetic_grayscale():
    splits = load_splits(
        synthetic(synthetic=SyntheticConfig(num_samples=64, channels=1, image_size=8)), seed=0
    )
    check_contract(splits)
    assert splits.train.images.shape[1:] == (1, 8, 8) and len(splits.mean) == 1
