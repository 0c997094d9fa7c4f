"""The loop's only way out: a `Reporter` receives progress, per-epoch metrics and the end.

`fit()` calls `epoch()` once per epoch on *every* rank (Ray Train's `report` is a barrier
that every worker must reach); checkpoints are attached on rank 0 only. Console output,
JSON-lines files, Ray Train/Tune reports and MLflow logging are all reporters, so the loop
never knows who is listening.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """What a reporter may want to show before the first step."""

    name: str
    epochs: int
    start_epoch: int  # epochs already done (resumed runs start > 0)
    steps_per_epoch: int
    global_batch: int
    world_size: int
    device: str
    train_size: int
    val_size: int
    parameters: int  # trainable parameters of the online network
    terms: tuple[str, ...]
    out_dir: str | None = None
    data: str = "in memory"  # where training batches come from


class Reporter:
    """Receives a run's progress; every method is optional."""

    def start(self, info: RunInfo) -> None:
        """Before the first step (after a resume: before the first new step)."""

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """Every `log_every` steps, on every rank: the global mean of the losses since the last call.

        Args:
            epoch: 0-based epoch in progress; step: 0-based step within it.
        """

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        """Once per epoch on every rank; `metrics["epoch"]` counts completed epochs (1-based)."""

    def finish(self, summary: Mapping[str, float]) -> None:
        """After the last epoch and the final evaluation."""

    def fail(self, error: BaseException) -> None:
        """The run stopped with `error` (which `fit()` re-raises)."""


class Reporters(Reporter):
    """Several reporters as one."""

    def __init__(self, reporters: Iterable[Reporter]) -> None:
        self.reporters = list(reporters)

    def start(self, info: RunInfo) -> None:
        for r in self.reporters:
            r.start(info)

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        for r in self.reporters:
            r.step(epoch, step, metrics)

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        for r in self.reporters:
            r.epoch(metrics, checkpoint)

    def finish(self, summary: Mapping[str, float]) -> None:
        for r in self.reporters:
            r.finish(summary)

    def fail(self, error: BaseException) -> None:
        for r in self.reporters:
            r.fail(error)


@dataclass
class Recorder(Reporter):
    """Keeps everything in memory (for tests and notebooks)."""

    info: RunInfo | None = None
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[Path | None] = field(default_factory=list)
    summary: dict[str, float] | None = None
    error: BaseException | None = None

    def start(self, info: RunInfo) -> None:
        self.info = info

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        self.steps.append({"epoch": epoch, "step": step, **metrics})

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        self.epochs.append(dict(metrics))
        self.checkpoints.append(checkpoint)

    def finish(self, summary: Mapping[str, float]) -> None:
        self.summary = dict(summary)

    def fail(self, error: BaseException) -> None:
        self.error = error


class JsonlReporter(Reporter):
    """Appends one JSON object per event to a file (`<out>/metrics.jsonl`).

    Events: start, step, epoch, finish, fail. Appending keeps the history of a resumed run in
    one file; each record carries `time` (Unix seconds).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, event: str, **record: Any) -> None:
        line = json.dumps({"event": event, "time": round(time.time(), 3), **_finite(record)})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def start(self, info: RunInfo) -> None:
        self._write("start", **asdict(info))

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        self._write("step", epoch=epoch, step=step, **metrics)

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        self._write("epoch", **metrics, checkpoint=str(checkpoint) if checkpoint else None)

    def finish(self, summary: Mapping[str, float]) -> None:
        self._write("finish", **summary)

    def fail(self, error: BaseException) -> None:
        self._write("fail", error=f"{type(error).__name__}: {error}")


def _finite(record: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: write non-finite floats as strings ("nan", "inf")."""
    return {
        k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in record.items()
    }


def read_jsonl(path: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """Read the records of a `JsonlReporter` file, optionally of one event type."""
    records = [
        json.loads(line)
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return [r for r in records if event is None or r["event"] == event]
