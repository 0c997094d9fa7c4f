"""Checkpoints are atomic directories; only complete ones are ever listed or loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from raysl.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint


def test_save_load_keep(tmp_path: Path) -> None:
    for epoch in range(1, 5):
        save_checkpoint(
            tmp_path, epoch, {"epoch": epoch, "w": torch.full((3,), float(epoch))}, keep=2
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_0003", "epoch_0004"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["epoch"] == 4 and state["w"].tolist() == [4.0, 4.0, 4.0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resaving_an_epoch_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"v": 1})
    save_checkpoint(tmp_path, 1, {"v": 2})
    assert load_checkpoint(tmp_path / "epoch_0001")["v"] == 2
    assert len(list(tmp_path.iterdir())) == 1


def test_half_written_checkpoints_are_invisible(tmp_path: Path) -> None:
    """Kill a writer in the middle of a large save: nothing incomplete is ever listed."""
    save_checkpoint(tmp_path, 1, {"v": 1})
    script = (
        "import sys, torch; from raysl.checkpoint import save_checkpoint\n"
        "for e in range(2, 100): save_checkpoint(sys.argv[1], e, {'x': torch.randn(4_000_000)}, keep=100)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.name.startswith(".tmp-") for p in tmp_path.iterdir()
    ):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    for checkpoint in list_checkpoints(tmp_path):  # every listed checkpoint loads completely
        state = load_checkpoint(checkpoint)
        assert "v" in state or state["x"].numel() == 4_000_000
    assert latest_checkpoint(tmp_path) is not None
    assert os.path.exists(tmp_path / "epoch_0001" / "state.pt")
