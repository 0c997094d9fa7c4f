"""Checkpoints: one directory per saved epoch, written atomically, newest ones kept.

Layout: `<dir>/epoch_0003/state.pt` (+ `meta.json`). A checkpoint is first written to a hidden
temporary directory and renamed into place, so a reader (or a resumed run) never sees a
half-written one, whatever kills the writer. A checkpoint *directory* is also what
`ray.train.Checkpoint.from_directory` takes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

PATTERN = re.compile(r"^epoch_(\d{4,})$")
STATE = "state.pt"


def save_checkpoint(
    directory: str | Path,
    epoch: int,
    state: dict[str, Any],
    keep: int = 2,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write `state` as `<directory>/epoch_<epoch>/` atomically and drop all but the `keep` newest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"epoch_{epoch:04d}"
    tmp = directory / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(tmp / STATE, lambda f: torch.save(state, f))
        _write(
            tmp / "meta.json",
            lambda f: f.write(json.dumps({"epoch": epoch, **(meta or {})}, indent=2).encode()),
        )
        if final.exists():  # re-saving an epoch (a resumed run repeating it): swap, then delete
            old = directory / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for stale in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if PATTERN.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the state saved by `save_checkpoint` (`path` is the epoch directory or its state.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE
    return torch.load(path, map_location=map_location, weights_only=False)


def _write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Config keys that may change between a run and its resumption.
RESUMABLE = (
    "epochs",
    "log_every",
    "device",
    "eval.",
    "checkpoint.",
    "data.root",
    "data.download",
    "data.on_device",
)


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint under a config that changes what is being trained."""
    from raysl.errors import ConfigError, Problem

    changed = sorted(
        key
        for key in set(saved) | set(current)
        if saved.get(key) != current.get(key) and not key.startswith(RESUMABLE)
    )
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
        raise ConfigError(
            Problem(
                f"the checkpoint was made with a different config ({diffs}); resume with the original "
                "config or start a new run in another --out directory",
                key="--resume",
            )
        )
