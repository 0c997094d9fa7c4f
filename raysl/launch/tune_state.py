"""Tune's experiment state kept restorable when the driver is killed while writing it.

Ray Tune (2.60) snapshots a study into its experiment directory by overwriting files in
place (`experiment_state-*.json`, the searcher's `searcher-state-*.pkl`, ...; a
`pyarrow.fs.copy_files` from the driver's staging directory, not write-then-rename). A driver
killed mid-copy leaves a truncated file, and `Tuner.restore` then logs "Failed to restore the
run state" and *restarts the experiment from nothing* (`TuneController.__init__`): a resumed
study silently starts over. Seen in tests/launch/test_finalists.py: the finalists' state was
0 bytes and the resumed grid ran one trial with an empty config. A truncated `tuner.pkl`
fails loudly instead (ray-project/ray#58179).

raysl keeps a copy of each state file beside it, `<name>.last-good` (a name Tune neither
restores nor uploads: it syncs only `.json` and `.pkl`), taken by `KeepState` at the end of a
Tune controller step whenever the file changed and reads whole (JSON that parses; a pickle
whose opcode stream runs to its STOP, checked with `pickletools`, nothing unpickled).
Before a restore, `repair_state` puts a truncated file's last good copy back, or, with none
(the driver killed during Tune's first snapshot), moves it aside to `<name>.corrupt`;
`restorable` is then false when no experiment state is left, and the study starts anew
rather than letting Tune restart it with a broken search space. Local storage only (a
cloud `storage_path` is left to Tune).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickletools
import shutil
import time
from pathlib import Path
from typing import Any

import ray.tune

# Tune's state files (TuneController, Searcher, SearchGenerator, BasicVariantGenerator,
# CallbackList `CKPT_FILE_TMPL`s) and the Tuner's own pickle
PATTERNS = (
    "experiment_state-*.json",
    "searcher-state-*.pkl",
    "search_gen_state-*.json",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
    "tuner.pkl",
)
GOOD, CORRUPT = ".last-good", ".corrupt"


def reads_whole(path: Path) -> bool:
    """Whether `path` holds a complete pickle or JSON document (not truncated)."""
    try:
        return whole(path.read_bytes())
    except OSError:
        return False


def whole(data: bytes) -> bool:
    """Whether `data` is a complete pickle or JSON document. Told apart by content: Tune's
    `basic-variant-state-*.json` is a pickle despite its name."""
    try:
        if data[:1] == b"\x80":  # a pickle's PROTO opcode (protocol 2 and up)
            return list(pickletools.genops(data))[-1][0].name == "STOP"
        json.loads(data)
    except (ValueError, IndexError):  # JSONDecodeError is a ValueError, as a cut pickle's
        return False
    return bool(data)


def state_files(directory: Path) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in directory.glob(pattern) if p.is_file())


def keep_good_copies(directory: Path, seen: dict[str, tuple[int, int]]) -> None:
    """Copy each state file that changed since `seen` and reads whole to `<name>.last-good`
    (written to a temporary name, then renamed)."""
    for path in state_files(directory):
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if seen.get(path.name) == stamp:
            continue
        data = path.read_bytes()  # one read: what is checked is what is kept
        if not whole(data):
            continue  # being written: looked at again next step
        tmp = path.with_name(path.name + GOOD + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path.with_name(path.name + GOOD))
        seen[path.name] = stamp


def repair_state(experiment: str) -> list[str]:
    """Put back the last good copy of every truncated state file in `experiment` (or move
    the file aside when it has none). Returns one line per file repaired, for the user."""
    directory = Path(experiment)
    if not directory.is_dir():
        return []
    lines = []
    for path in state_files(directory):
        if reads_whole(path):
            continue
        good = path.with_name(path.name + GOOD)
        if good.is_file() and reads_whole(good):
            tmp = path.with_name(path.name + ".tmp")
            shutil.copyfile(good, tmp)
            os.replace(tmp, path)
            lines.append(
                f"{path.name} in {directory} was cut short (the driver was killed while "
                "Tune wrote it): its last good copy is back"
            )
        else:
            os.replace(path, path.with_name(path.name + CORRUPT))
            lines.append(
                f"{path.name} in {directory} was cut short and has no good copy: "
                f"moved aside to {path.name}{CORRUPT}"
            )
    return lines


def restorable(experiment: str) -> bool:
    """`Tuner.can_restore`, and an experiment state that reads whole (after `repair_state`)."""
    if not ray.tune.Tuner.can_restore(experiment):
        return False
    directory = Path(experiment)
    if not directory.is_dir():  # cloud storage: Tune's word
        return True
    states = sorted(directory.glob(PATTERNS[0]))
    return bool(states) and reads_whole(states[-1])  # Tune restores the newest by name


class KeepState(ray.tune.Callback):
    """Keeps the last good copy of each of Tune's state files (see the module docstring)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.seen: dict[str, tuple[int, int]] = {}
        self.every_s, self.last = every_s, 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.last < self.every_s:
            return  # a listing of the experiment directory at most once a second
        self.last = time.monotonic()
        directory = _local_experiment_dir(trials)
        if directory is not None:
            with contextlib.suppress(OSError):  # a file renamed under us: looked at next step
                keep_good_copies(directory, self.seen)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.last = 0.0
        self.on_step_end(0, trials)


def _local_experiment_dir(trials: list) -> Path | None:
    import pyarrow.fs

    if not trials:
        return None
    storage = trials[0].storage
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return None
    directory = Path(storage.experiment_fs_path)
    return directory if directory.is_dir() else None
