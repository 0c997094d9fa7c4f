"""Terminal output for people: a progress bar per epoch, one line per epoch, a final summary."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from raysl.errors import ConfigError, NonFiniteLossError
from raysl.reporting import Reporter, RunInfo

# The metrics worth a column in the epoch line, in order, with their short labels.
_SHOWN = (
    ("train/loss", "loss"),
    ("val/knn_top1", "kNN"),
    ("lr", "lr"),
    ("train/throughput", "img/s"),
    ("train/epoch_time", "s"),
)


def _fmt(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if key.endswith("top1") or "_top1_k" in key:  # accuracies, e.g. test/knn_top1_k20
        return f"{value:.2f}%"
    if key == "train/throughput":
        return f"{value:,.0f}"
    if key == "train/epoch_time":
        return f"{value:.1f}"
    if key == "lr":
        return f"{value:.3g}"
    return f"{value:.4f}"


class ConsoleReporter(Reporter):
    """Rich progress bar while an epoch runs (on a terminal), then one line per epoch."""

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(
            highlight=False, soft_wrap=True
        )  # log lines are never cut
        self.live = self.console.is_terminal if live is None else live
        self.progress: Progress | None = None
        self.task = None
        self.info: RunInfo | None = None
        self.best: tuple[float, int] | None = None
        self.last_checkpoint: Path | None = None

    def start(self, info: RunInfo) -> None:
        self.info = info
        resumed = f", resuming after epoch {info.start_epoch}" if info.start_epoch else ""
        workers = f" x {info.world_size} workers" if info.world_size > 1 else ""
        if info.data != "in memory":
            workers += f"; data {info.data}"
        self.console.print(
            f"[bold]raysl train[/] {info.name}: {info.epochs} epochs x {info.steps_per_epoch} steps, "
            f"batch {info.global_batch}, {info.train_size:,} train / {info.val_size:,} val images, "
            f"{info.parameters / 1e6:.2f}M params, terms: {', '.join(info.terms)}, {info.device}{workers}{resumed}"
        )

    def _bar(self, epoch: int) -> None:
        assert self.info is not None
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.info.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.info.steps_per_epoch, loss="-")

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        if not self.live:
            return
        if self.progress is None:
            self._bar(epoch)
        assert self.progress is not None and self.task is not None
        self.progress.update(self.task, completed=step + 1, loss=f"{metrics['train/loss']:.4f}")

    def _stop_bar(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        self._stop_bar()
        assert self.info is not None
        epoch = int(metrics["epoch"])
        if checkpoint is not None:
            self.last_checkpoint = checkpoint
        knn = metrics.get("val/knn_top1")
        if knn is not None and (self.best is None or knn > self.best[0]):
            self.best = (knn, epoch)
        if knn is None and epoch != self.info.epochs:
            return  # with eval.every > 1, one line per evaluation keeps long runs readable
        parts = [f"epoch {epoch:>3}/{self.info.epochs}"]
        parts += [f"{label} {_fmt(key, metrics[key])}" for key, label in _SHOWN if key in metrics]
        terms = [k for k in metrics if k.startswith("train/loss/")]
        if len(terms) > 1:
            parts.append(
                "("
                + ", ".join(f"{k.removeprefix('train/loss/')} {metrics[k]:.4f}" for k in terms)
                + ")"
            )
        if checkpoint is not None:
            parts.append("[dim]ckpt[/]")
        self.console.print("  ".join(parts))

    def finish(self, summary: Mapping[str, float]) -> None:
        self._stop_bar()
        table = Table(title="summary", show_header=True, header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in sorted(summary):
            if key != "epoch":
                table.add_row(key, _fmt(key, summary[key]))
        if self.best is not None:
            table.add_row("best val/knn_top1", f"{self.best[0]:.2f}% (epoch {self.best[1]})")
        self.console.print(table)
        if self.last_checkpoint is not None:
            self.console.print(f"last checkpoint: {self.last_checkpoint}")

    def fail(self, error: BaseException) -> None:
        self._stop_bar()
        from raysl.outputs import disk_full

        if isinstance(error, (KeyboardInterrupt, ConfigError, NonFiniteLossError)) or disk_full(
            error
        ):
            return  # the command line prints these itself, once
        self.console.print(f"[bold red]failed:[/] {type(error).__name__}: {error}")
