"""Streaming plan of a Parquet export: the same splits as loading it, without the train images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raysl.config import DataConfig
from raysl.data import export_parquet, load_splits
from raysl.data.stream import plan_stream


def test_plan_matches_the_in_memory_splits(tmp_path: Path) -> None:
    source = DataConfig(source="synthetic", synthetic={"num_samples": 300, "image_size": 8})
    export_parquet(source, tmp_path / "pq", seed=3)
    cfg = DataConfig(source="parquet", root=str(tmp_path / "pq"))
    full = load_splits(cfg, seed=3)
    plan = plan_stream(cfg, seed=3, bank_limit=50)
    assert torch.equal(plan.splits.val.images, full.val.images)
    assert torch.equal(plan.splits.val.labels, full.val.labels)
    assert torch.equal(plan.splits.test.images, full.test.images)
    assert len(plan.train_index) == len(full.train.images) and plan.num_samples == 300
    assert torch.equal(plan.splits.train.images, full.train.images[:50])  # the kNN bank
    val_index = set(range(300)) - set(plan.train_index.tolist())
    assert len(val_index) == len(full.val.images)
    assert np.all(np.diff(plan.train_index) > 0)
