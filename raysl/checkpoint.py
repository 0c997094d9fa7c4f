"""Checkpoints: one directory per saved epoch, written atomically, newest ones kept.

Layout: `<dir>/epoch_0003/state.pt` (+ `meta.json`). A checkpoint is first written to a hidden
temporary directory and renamed into place, so a reader (or a resumed run) never sees a
half-written one, whatever kills the writer. A checkpoint *directory* is also what
`ray.train.Checkpoint.from_directory` takes.

Loading is safe on files from anyone: `torch.load(weights_only=True)` reads only tensors and
plain data, and a crafted pickle is refused before any of it runs. A corrupt checkpoint
(empty, truncated, random bytes) is named, and `newest_intact` falls back to the one before.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysl.errors import ConfigError, Problem, shorten

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


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    require: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Load the state saved by `save_checkpoint` (`path` is the epoch directory or its state.pt).

    Only tensors and plain data are loaded (`torch.load(weights_only=True)`): a file that asks
    to import or call anything (a crafted pickle) is refused before any of it runs.

    Args:
        require: keys the state must have (a state without them is reported as corrupt).

    Raises:
        CheckpointError: the file is unsafe (`unsafe` is True), empty, truncated, not a
            PyTorch file, or lacks a required key; one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found:
            raise CheckpointError(
                path,
                f"refused: it asks to load {found.group(1)}, and a raysl checkpoint holds only "
                "tensors and plain data (nothing in it was run); delete the file unless you "
                "know where it came from",
                unsafe=True,
            ) from None
        raise CheckpointError(path, "corrupt (not a PyTorch checkpoint)") from None
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except PermissionError:
        raise CheckpointError(
            path, "cannot be read (permission denied); fix its permissions"
        ) from None
    except (EOFError, OSError, RuntimeError, ValueError, UnicodeDecodeError, IndexError):
        size = path.stat().st_size if path.is_file() else 0
        why = "empty (0 bytes)" if size == 0 else f"truncated or damaged ({size:,} bytes)"
        raise CheckpointError(path, f"corrupt: {why}") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            path, f"corrupt: not a raysl checkpoint (it holds a {type(state).__name__})"
        )
    if missing := [key for key in require if key not in state]:
        raise CheckpointError(
            path, f"corrupt: not a raysl checkpoint (missing {', '.join(missing)})"
        )
    return state


def newest_intact(
    directory: str | Path, require: tuple[str, ...] = ()
) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint in `directory` that loads, its state, and a note per one skipped.

    Corrupt checkpoints newer than it are skipped (each gets a note naming the file); an unsafe
    one stops the search.

    Raises:
        CheckpointError: a checkpoint is unsafe, or there are checkpoints and none loads.
    """
    found = list_checkpoints(directory)
    notes: list[str] = []
    reasons: list[str] = []
    for checkpoint in reversed(found):
        try:
            return checkpoint, load_checkpoint(checkpoint, require=require), notes
        except CheckpointError as error:
            if error.unsafe:
                raise
            notes.append(str(error))
            reasons.append(f"{checkpoint.name}: {error.problems[0].message}")
    if found:
        raise CheckpointError(
            Path(directory),
            f"none of the {len(found)} checkpoint(s) can be read ({'; '.join(reasons)}); restore "
            "them from a copy, or start a new run in another --out directory",
        )
    return None, None, notes


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be loaded: corrupt, or unsafe (it would run code)."""

    def __init__(self, path: Path, message: str, unsafe: bool = False) -> None:
        self.unsafe = unsafe
        super().__init__(Problem(message, where=str(path)))


# Older raysl checkpoints hold numpy's RNG state as a uint32 array: allow exactly that
# (numpy 2 pickles name numpy._core, numpy 1 numpy.core).
_RECONSTRUCT = np._core.multiarray._reconstruct
_NUMPY_GLOBALS: list[Any] = [
    _RECONSTRUCT,
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
]


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


def check_resumable(
    saved: dict[str, Any],
    current: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    mutable: Iterable[str] = (),
) -> None:
    """Refuse to resume a checkpoint under a config that changes what is being trained.

    `saved` is the flat config stored in the checkpoint (or its meta.json, where tuples are
    lists): values are compared as JSON. A key the saved config lacks (a checkpoint made
    before the key existed) is unchanged when its current value is its default (`defaults`,
    default `raysl.config.config_defaults()`). Keys in `mutable` may differ (PBT continues
    another trial's checkpoint with those values changed; `raysl.mutable`).
    """
    mutable = set(mutable)
    if defaults is None:
        from raysl.config import config_defaults

        defaults = config_defaults()
    saved, current, defaults = _as_json(saved), _as_json(current), _as_json(defaults)
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if saved.get(key) != current.get(key)
        and not key.startswith(RESUMABLE)
        and key not in mutable
        and not (key not in saved and key in defaults and current.get(key) == defaults[key])
    )
    if changed:
        diffs = ", ".join(
            f"{k}: {shorten(saved.get(k))} -> {shorten(current.get(k))}" for k in changed[:6]
        )
        raise ConfigError(
            Problem(
                f"the checkpoint was made with a different config ({diffs}); resume with the original "
                "config or start a new run in another --out directory",
                key="--resume",
            )
        )


def _as_json(flat: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(flat), default=str))
