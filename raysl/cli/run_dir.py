"""The run directory of `raysl train`, written only once the run has really started, and the
checks of a `--resume` that run before it is.

`fit()` calls its reporter's `start` after the data has loaded, the model is built and any
checkpoint is restored (and its config checked). `RunDir` creates `<out>/`, `config.yaml`,
`metrics.jsonl` and `raysl.log` only then, so bad input (a missing data root, a corrupt image,
a refused `--resume`) leaves nothing behind and changes nothing in an earlier run's directory.
Log records and warnings from before the start are held in memory and written to the log then.
"""

from __future__ import annotations

import logging
import logging.handlers
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from raysl.reporting import Reporter, RunInfo


class RunDir(Reporter):
    """Creates the run directory at `start`, then forwards every event to the console and
    `metrics.jsonl` reporters (events before `start` are dropped: nothing has run yet).

    Args:
        out: the run directory.
        resolved: what `config.yaml` holds (name and the validated config).
        live: the console's progress bar (None: when on a terminal).
    """

    def __init__(self, out: Path, resolved: Mapping[str, Any], live: bool | None) -> None:
        self.out, self.resolved, self.live = out, dict(resolved), live
        self.new_root = _first_missing(out)  # what to remove if the run fails before any output
        self.inner: Reporter | None = None
        self._held = _hold_logs()
        self._log: logging.Handler | None = None

    def create(self) -> None:
        """Create the directory and its log file now (Ray needs the log before its workers
        report); `config.yaml` and `metrics.jsonl` still wait for `start`."""
        if self._log is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log = _release_logs(self._held, self.out / "raysl.log")

    def remove_if_new(self) -> None:
        """Remove what `create` made, when the directory did not exist before this run, and
        stop holding log records."""
        if self._log is None:
            logging.getLogger().removeHandler(self._held)
            self._held.close()
        if self.new_root is not None and self.inner is None:
            shutil.rmtree(self.new_root, ignore_errors=True)

    def start(self, info: RunInfo) -> None:
        from raysl.console import ConsoleReporter
        from raysl.reporting import JsonlReporter, Reporters

        self.create()
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.resolved, sort_keys=False))
        self.inner = Reporters(
            [ConsoleReporter(live=self.live), JsonlReporter(self.out / "metrics.jsonl")]
        )
        self.inner.start(info)

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        if self.inner is not None:
            self.inner.step(epoch, step, metrics)

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        if self.inner is not None:
            self.inner.epoch(metrics, checkpoint)

    def finish(self, summary: Mapping[str, float]) -> None:
        if self.inner is not None:
            self.inner.finish(summary)

    def fail(self, error: BaseException) -> None:
        if self.inner is not None:
            self.inner.fail(error)


# ---- resuming: checked before anything is written -------------------------------------------
def newest_state(out: Path, cfg, talk: bool) -> dict:
    """The state of the newest checkpoint that loads, checked against `cfg` (else ConfigError).

    A corrupt checkpoint newer than it is named in a note; the run resumes from the one before.
    """
    from raysl.checkpoint import check_resumable, newest_intact
    from raysl.train_state import STATE_KEYS

    path, state, notes = newest_intact(out / "checkpoints", STATE_KEYS)
    assert path is not None and state is not None  # `existing` listed one
    check_resumable(state["config"], cfg.to_flat())
    if talk:
        for note in notes:
            click.echo(f"note: {note}; resuming from {path.name} instead", err=True)
    return state


def check_storage_resumable(storage: str, name: str, newest: str, cfg) -> None:
    """Refuse a changed config before Ray starts, from the newest checkpoint's meta.json."""
    import json

    import pyarrow.fs

    from raysl.checkpoint import check_resumable

    fs, root = pyarrow.fs.FileSystem.from_uri(
        storage if "://" in storage else str(Path(storage).resolve())
    )
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{name}/checkpoints/{newest}/meta.json") as f:
            saved = json.loads(f.read(1 << 20)).get("config")
    except (OSError, ValueError, AttributeError):
        return  # an older checkpoint without meta.json: the workers check the state itself
    if isinstance(saved, dict):
        check_resumable(saved, cfg.to_flat())


# ---- helpers -------------------------------------------------------------------------------
def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (None: `path` exists)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def _hold_logs() -> logging.handlers.MemoryHandler:
    """Keep warnings and library log records in memory, off the terminal."""
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(held)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    py_warnings = logging.getLogger("py.warnings")
    for handler in [h for h in py_warnings.handlers if isinstance(h, logging.StreamHandler)]:
        py_warnings.removeHandler(handler)
    return held


def _release_logs(held: logging.handlers.MemoryHandler, path: Path) -> logging.Handler:
    """Write the held records to `path` and send later ones there directly."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    held.setTarget(handler)
    held.flush()
    root = logging.getLogger()
    root.removeHandler(held)
    root.addHandler(handler)
    held.close()
    return handler
