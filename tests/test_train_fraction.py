"""`data.train_fraction`: a stratified, seeded subset of the training split (issue 12, item 1).

Stratified (each class within one image of its share, at least one), fixed by the seed, val
and test untouched, the kNN bank is the subset; bad values exit 2 naming the key, creating
nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from raysl.cli import main
from raysl.config import DataConfig, EvalConfig
from raysl.data import load_splits
from raysl.data.splits import knn_bank_size, read_source, stratified_subset, train_rows
from raysl.evaluate import Evaluator
from raysl.yamlio import unflatten
from tests.conftest import TINY

DIGITS = DataConfig(source="digits")


def test_each_class_is_within_one_image_of_its_share():
    counts = [300, 97, 41, 10, 3, 1]  # uneven, and classes too small for their share
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(6), counts))
    for fraction in (0.01, 0.1, 0.25, 0.5, 0.9):
        picked = stratified_subset(labels, fraction, seed=4)
        assert np.all(np.diff(picked) > 0)  # sorted, no repeats: the source's order is kept
        got = np.bincount(labels[picked], minlength=6)
        share = fraction * np.array(counts)
        assert np.all(np.abs(got - share) < 1), (fraction, got, share)
        assert np.all(got >= 1), "every class keeps at least one image"
        if np.all(share >= 1):
            assert got.sum() == round(fraction * labels.size)


def test_unlabelled_rows_get_a_plain_seeded_subset():
    labels = np.concatenate([np.repeat(np.arange(3), 20), np.full(1000, -1)])  # STL-10-like
    picked = stratified_subset(labels, 0.1, seed=0)
    assert (labels[picked] < 0).sum() == 100
    assert np.bincount(labels[picked][labels[picked] >= 0]).tolist() == [2, 2, 2]
    again, other = stratified_subset(labels, 0.1, seed=0), stratified_subset(labels, 0.1, seed=1)
    assert np.array_equal(picked, again) and not np.array_equal(picked, other)
    only = stratified_subset(np.full(50, -1), 0.3, seed=2)  # an unlabelled-only split
    assert only.size == 15 and np.all(np.diff(only) > 0)


def test_the_subset_is_fixed_by_the_seed():
    labels = read_source(DIGITS, 0).train_labels
    cfg = DataConfig(source="digits", train_fraction=0.3)
    a, b, c = (train_rows(labels, cfg, seed)[0] for seed in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    first, second = load_splits(cfg, seed=0), load_splits(cfg, seed=0)
    assert torch.equal(first.train.images, second.train.images)
    assert not torch.equal(first.train.labels, load_splits(cfg, seed=1).train.labels)


def test_val_and_test_are_untouched_and_train_is_a_stratified_subset():
    full = load_splits(DIGITS, seed=3)
    part = load_splits(DataConfig(source="digits", train_fraction=0.25), seed=3)
    assert torch.equal(part.val.images, full.val.images)
    assert torch.equal(part.val.labels, full.val.labels)
    assert torch.equal(part.test.images, full.test.images)
    assert torch.equal(part.test.labels, full.test.labels)
    assert len(part.train) == round(0.25 * len(full.train))
    # every subset image is one of the full train images (none from val), in the same order
    labels = read_source(DIGITS, 3).train_labels
    all_rows, val_rows = train_rows(labels, DIGITS, 3)
    sub_rows, sub_val = train_rows(labels, DataConfig(source="digits", train_fraction=0.25), 3)
    assert np.array_equal(sub_val, val_rows)
    assert np.isin(sub_rows, all_rows).all() and np.all(np.diff(sub_rows) > 0)
    assert torch.equal(part.train.images, full.train.images[np.isin(all_rows, sub_rows)])
    got = np.bincount(part.train.labels.numpy(), minlength=10)
    share = 0.25 * np.bincount(full.train.labels.numpy(), minlength=10)
    assert np.all(np.abs(got - share) < 1), (got, share)
    # train_limit applies after the fraction; a fraction of 1 is the full split
    limited = load_splits(DataConfig(source="digits", train_fraction=0.25, train_limit=50), 3)
    assert torch.equal(limited.train.images, part.train.images[:50])
    whole = load_splits(DataConfig(source="digits", train_fraction=1), 3)
    assert torch.equal(whole.train.images, full.train.images)


def test_a_streamed_parquet_export_gets_the_same_subset(tmp_path: Path):
    from raysl.data import export_parquet
    from raysl.data.stream import plan_stream

    source = DataConfig(source="synthetic", synthetic={"num_samples": 300, "image_size": 8})
    export_parquet(source, tmp_path / "pq", seed=3)
    cfg = DataConfig(source="parquet", root=str(tmp_path / "pq"), train_fraction=0.4)
    loaded, plan = load_splits(cfg, seed=3), plan_stream(cfg, seed=3, bank_limit=1000)
    assert len(plan.train_index) == len(loaded.train) == round(0.4 * 270)
    assert torch.equal(plan.splits.train.images, loaded.train.images)  # the bank: the subset
    assert torch.equal(plan.splits.val.images, load_splits(source, seed=3).val.images)


class _Pixels(nn.Module):
    """A fixed random projection of the pixels: a backbone with no training to do."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def test_the_knn_bank_is_the_subset():
    cfg = DataConfig(source="digits", train_fraction=0.2)
    splits = load_splits(cfg, seed=0)
    # digits: 1437 training images, 144 to val, a fifth of the 1293 left: 259
    assert knn_bank_size(cfg, None) == len(splits.train) == 259
    every = EvalConfig(knn_k=len(splits.train))  # the whole bank votes
    evaluator = Evaluator(every, splits, lambda x: x.float() / 255, torch.device("cpu"), False, 0)
    torch.manual_seed(0)
    backbone = _Pixels()
    bank, labels = evaluator._bank(backbone, include_val=False)
    assert len(bank) == len(splits.train) and torch.equal(labels, splits.train.labels)
    # with k = the bank size every bank image votes: the subset's class sums decide
    with torch.no_grad():
        feats = nn.functional.normalize(backbone(splits.train.images.float() / 255), dim=1)
        query = nn.functional.normalize(backbone(splits.val.images.float() / 255), dim=1)
        w = ((query.double() @ feats.double().T) / 0.1).exp()  # (Q, N)
        votes = torch.zeros(len(query), 10, dtype=torch.float64).index_add_(1, labels, w)
    want = 100.0 * (votes.argmax(1) == splits.val.labels).double().mean().item()
    assert evaluator.knn(backbone, "val")["val/knn_top1"] == pytest.approx(want)


# ---- bad values: exit 2, one line naming data.train_fraction, nothing created ----------------
def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(
    "where, value",
    [("set", "0"), ("set", "1.5"), ("set", "-0.2"), ("set", "half"), ("set", "true"),
     ("file", "'0.5'"), ("file", "true"), ("file", "0")],
)  # fmt: skip
def test_a_bad_fraction_exits_2_naming_the_key(tmp_path, monkeypatch, capsys, where, value):
    monkeypatch.chdir(tmp_path)
    doc = {"name": "bad", "config": unflatten({**TINY, "epochs": 1})}
    text = yaml.safe_dump(doc, sort_keys=False)
    if where == "file":
        text = text.replace("  data:\n", f"  data:\n    train_fraction: {value}\n", 1)
    (tmp_path / "run.yaml").write_text(text)
    args = ["train", "run.yaml", "--out", "out"]
    if where == "set":
        args += ["--set", f"data.train_fraction={value}"]
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "data.train_fraction" in err and "(0, 1]" in err, err
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_fraction_whose_bank_is_too_small_for_knn_k_is_refused(tmp_path, monkeypatch, capsys):
    """digits: 1293 training images after val; a tenth keeps 129, fewer than k = 200."""
    monkeypatch.chdir(tmp_path)
    flat = {**TINY, "data.source": "digits", "eval.knn_k": 200}
    doc = {"name": "small", "config": unflatten(flat)}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(SystemExit) as info:
        main(["train", "run.yaml", "--out", "out", "--set", "data.train_fraction=0.1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "eval.knn_k" in err and "holds 129" in err, err
    assert not (tmp_path / "out").exists()
