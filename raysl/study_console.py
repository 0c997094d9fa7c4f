"""Terminal output of a study: a live table of trials while it runs, a leaderboard at the end."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def wide_console() -> Console:
    """Rich console; off a terminal (logs, CI) wide enough that tables are not cut to 80 columns."""
    width = None if sys.stdout.isatty() else 160
    return Console(highlight=False, soft_wrap=True, width=width)


_STATUS_STYLE = {
    "running": "cyan",
    "completed": "green",
    "stopped": "yellow",
    "failed": "red",
    "pending": "dim",
}


@dataclass
class _Row:
    trial_id: str
    searched: dict[str, Any]
    status: str = "running"
    epoch: int = 0
    last: float | None = None
    best: float | None = None
    note: str = ""


@dataclass
class StudyTable:
    """Trials of a study as they run. Live (redrawn in place) on a terminal; one line per
    finished trial otherwise, so logs and CI output stay readable."""

    name: str
    metric: str
    mode: str
    epochs: int
    num_samples: int
    console: Console = field(default_factory=lambda: wide_console())
    live: bool | None = None
    rows: dict[str, _Row] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.live = self.console.is_terminal if self.live is None else self.live
        self._live: Live | None = None
        self.started = time.time()

    def start(self, note: str = "") -> None:
        self.console.print(
            f"[bold]raysl tune[/] {self.name}: {self.num_samples} trials x up to {self.epochs} epochs, "
            f"optimising {self.metric} ({self.mode}){note}"
        )
        if self.live:
            self._live = Live(
                self._table(), console=self.console, refresh_per_second=2, transient=True
            )
            self._live.start()

    def trial_started(self, trial_id: str, searched: Mapping[str, Any]) -> None:
        self.rows.setdefault(trial_id, _Row(trial_id, dict(searched)))
        self.rows[trial_id].status = "running"
        self._refresh()

    def trial_result(self, trial_id: str, epoch: int, value: float | None) -> None:
        row = self.rows.setdefault(trial_id, _Row(trial_id, {}))
        row.epoch = epoch
        if value is not None and math.isfinite(value):
            row.last = value
            if row.best is None or self._better(value, row.best):
                row.best = value
        self._refresh()

    def trial_ended(self, trial_id: str, status: str, note: str = "") -> None:
        row = self.rows.setdefault(trial_id, _Row(trial_id, {}))
        row.status, row.note = status, note
        self._refresh()
        if not self.live:
            value = f"{row.last:.2f}" if row.last is not None else "-"
            self.console.print(
                f"  trial {trial_id} {status} after {row.epoch} epoch(s): {self.metric} {value}"
                + (f"  ({note})" if note else "")
                + f"  {_params(row.searched)}"
            )

    def finish(self, leaderboard: Sequence[Mapping[str, Any]], footer: Sequence[str] = ()) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        minutes = (time.time() - self.started) / 60
        self.console.print(f"{len(self.rows)} trials in {minutes:.1f} min: {summary}")
        if leaderboard:
            self.console.print(
                leaderboard_table(leaderboard, self.metric, title=f"leaderboard: {self.name}")
            )
        for line in footer:
            self.console.print(line)

    # ---- rendering ---------------------------------------------------------------------------
    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self) -> Group:
        done = sum(r.status != "running" for r in self.rows.values())
        head = Text(
            f"{done}/{self.num_samples} trials done, {sum(r.status == 'running' for r in self.rows.values())} running"
        )
        table = Table(show_header=True, header_style="bold", box=None)
        for column in ("trial", "status", "epoch", f"{self.metric} (last / best)", "searched"):
            table.add_column(column)
        for row in list(self.rows.values())[-20:]:
            style = _STATUS_STYLE.get(row.status, "")
            last = f"{row.last:.2f}" if row.last is not None else "-"
            best = f"{row.best:.2f}" if row.best is not None else "-"
            table.add_row(
                row.trial_id,
                f"[{style}]{row.status}[/]",
                f"{row.epoch}/{self.epochs}",
                f"{last} / {best}",
                _params(row.searched),
            )
        return Group(head, table)


def _short_key(key: str) -> str:
    return key.split(".", 1)[-1] if key.startswith("loss.") else key


def _params(searched: Mapping[str, Any]) -> str:
    return " ".join(f"{_short_key(k)}={_short(v)}" for k, v in searched.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def leaderboard_table(
    rows: Sequence[Mapping[str, Any]], metric: str, title: str = "leaderboard"
) -> Table:
    """Rows: {"trial_id", "status", "epochs", metric, "searched": {key: value}, ...}."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.get("searched", {}) if k not in keys]
    table = Table(title=title, header_style="bold")
    for column in ("#", "trial", "status", "epochs", metric, *(_short_key(k) for k in keys)):
        table.add_column(column, justify="right" if column in ("#", "epochs", metric) else "left")
    for rank, row in enumerate(rows, 1):
        value = row.get(metric)
        table.add_row(
            str(rank),
            str(row.get("trial_id", "")),
            str(row.get("status", "")),
            str(row.get("epochs", "")),
            f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-",
            *(_short(row.get("searched", {}).get(k, "")) for k in keys),
        )
    return table
