"""Parquet exports stream through Ray Data: exactly the training rows, decoded as loading would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raysl.config import Config
from raysl.data import export_parquet, load_splits
from raysl.reporting import read_jsonl
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    source = Config().override(
        {
            "data.source": "synthetic",
            "data.synthetic.num_samples": 512,
            "data.synthetic.image_size": 16,
        }
    )
    export_parquet(source.data, tmp_path / "pq", seed=0, shard_size=200)
    return tmp_path / "pq"


def test_stream_yields_the_training_rows(export: Path) -> None:
    import ray

    from raysl.launch.ray_data import stream_plan, train_dataset
    from raysl.launch.session import ray_session

    cfg = Config().override({"data.source": "parquet", "data.root": str(export)})
    full = load_splits(cfg.data, seed=0)
    plan = stream_plan(cfg)
    with ray_session(num_cpus=2):
        rows = list(train_dataset(cfg, plan).iter_rows())
    assert ray.is_initialized() is False
    index = np.array([r["index"] for r in rows])
    assert (
        sorted(index.tolist()) == plan.train_index.tolist()
    )  # every training row once, no val row
    order = np.argsort(index)
    images = torch.from_numpy(np.stack([rows[i]["image"] for i in order]))
    assert torch.equal(images, full.train.images)


def test_streamed_training_on_two_workers(export: Path, tmp_path: Path) -> None:
    config = tmp_path / "pq.yaml"
    config.write_text(
        f"config: {{epochs: 1, log_every: 1, data: {{source: parquet, root: {export}, batch_size: 64}}, "
        "model: {width: 8, proj_hidden_dim: 64, proj_dim: 32}, eval: {knn_k: 20}}\n"
    )
    out = tmp_path / "run"
    proc = run_cli(
        "train", str(config), "--out", str(out), "--workers", "2", "--cpus-per-worker", "0.5", "-q"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "streamed from" in proc.stdout and proc.stderr.strip() == ""
    start = read_jsonl(out / "metrics.jsonl", "start")[0]
    assert start["steps_per_epoch"] == start["train_size"] // 64 == 7
    assert len(read_jsonl(out / "metrics.jsonl", "step")) == 7
