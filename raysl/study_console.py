"""Terminal output of a study: a live table of trials while it runs, a leaderboard at the end."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from raysl.tracking.describe import short_key, short_value


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
    number: int | None = None  # the Optuna trial number
    status: str = "running"
    epoch: int = 0
    last: float | None = None
    best: float | None = None
    note: str = ""
    baseline: bool = False  # the trial that runs the base config
    label: str = ""  # instead of the Optuna number (a finalist: `#3 s1`)


@dataclass
class StudyTable:
    """Trials of a study as they run. Live (redrawn in place) on a terminal from the first
    trial on (not while Ray starts); one line per finished trial otherwise, so logs and CI
    output stay readable."""

    name: str
    metric: str
    mode: str
    epochs: int
    num_samples: int
    console: Console = field(default_factory=lambda: wide_console())
    live: bool | None = None
    rows: dict[str, _Row] = field(default_factory=dict)
    objectives: tuple[str, ...] = ()  # every metric of a multi-objective study

    def __post_init__(self) -> None:
        self.live = self.console.is_terminal if self.live is None else self.live
        self._live: Live | None = None
        self._finished = False
        self.started = time.time()

    def start(self, note: str = "") -> None:
        goal = "maximising" if self.mode == "max" else "minimising"
        goal = f"{goal} {self.metric}"
        if len(self.objectives) > 1:
            goal = f"searching the Pareto front of {', '.join(self.objectives)}"
        self.console.print(
            f"[bold]{self.name}[/]: {self.num_samples} trials of up to {self.epochs} epochs"
            f"{note}, {goal}",
            soft_wrap=False,  # wrapped at words on a narrow terminal
        )

    def note(self, text: str) -> None:
        """A dim line, wrapped at words."""
        self.console.print(Text(text, style="dim"), soft_wrap=False)

    def _start_live(self) -> None:
        """The live table appears with the first trial: no empty redraws while Tune starts."""
        if self.live and self._live is None and not self._finished:
            self._live = Live(
                self._table(), console=self.console, refresh_per_second=2, transient=True
            )
            self._live.start()

    def trial_started(
        self,
        trial_id: str,
        searched: Mapping[str, Any],
        number: int | None = None,
        baseline: bool = False,
        label: str = "",
    ) -> None:
        row = self.rows.setdefault(trial_id, _Row(trial_id, dict(searched)))
        row.status = "running"
        row.number = number if number is not None else row.number
        row.baseline, row.label = row.baseline or baseline, label or row.label
        self._start_live()
        self._refresh()

    def label(self, trial_id: str) -> str:
        """`#3` (the Optuna number), or the Tune trial id."""
        row = self.rows.get(trial_id)
        return _label(row) if row else trial_id

    def trial_exploited(self, trial_id: str, searched: Mapping[str, Any], note: str) -> None:
        """PBT: the trial continues another's checkpoint with these values."""
        self.rows.setdefault(trial_id, _Row(trial_id, {})).searched = dict(searched)
        self.note(note)
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
                f"  trial {_label(row)} {status} after {row.epoch} epoch(s): {self.metric} {value}"
                + (f"  ({note})" if note else "")
                + f"  {_params(row.searched)}"
            )

    def finish(
        self,
        leaderboard: Sequence[Mapping[str, Any]],
        footer: Sequence[str] = (),
        summary: str = "",
        searched: Sequence[str] = (),
    ) -> None:
        """The end: `summary` (`8 trials: 3 completed, 5 stopped; best #3 97.9 %`), the time,
        the leaderboard (`raysl.tracking.ranking.rank_trials` rows) and `footer` lines."""
        self._finished = True
        if self._live is not None:
            self._live.stop()
            self._live = None
        if not summary:
            counts: dict[str, int] = {}
            for row in self.rows.values():
                counts[row.status] = counts.get(row.status, 0) + 1
            parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            summary = f"{len(self.rows)} trials: {parts}"
        minutes = (time.time() - self.started) / 60
        self.console.print(summary, markup=False, highlight=False, soft_wrap=False)
        if leaderboard:
            self.console.print(
                leaderboard_table(
                    leaderboard,
                    self.metric,
                    searched,
                    title=f"leaderboard: {self.name} (the study took {minutes:.1f} min)",
                    width=self.console.width,
                    objectives=self.objectives,
                )
            )
        for line in footer:
            self.console.print(line, markup=False, highlight=False, soft_wrap=False)

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
        for column in ("trial", "status", "epoch", f"{self.metric} last / best", "searched"):
            table.add_column(column)
        for row in list(self.rows.values())[-20:]:
            style = _STATUS_STYLE.get(row.status, "")
            last = f"{row.last:.2f}" if row.last is not None else "-"
            best = f"{row.best:.2f}" if row.best is not None else "-"
            table.add_row(
                _label(row),
                f"[{style}]{row.status}[/]",
                f"{row.epoch}/{self.epochs}",
                f"{last} / {best}",
                _params(row.searched),
            )
        return Group(head, table)


def _label(row: _Row) -> str:
    if row.label:
        return row.label
    text = f"#{row.number}" if row.number is not None else row.trial_id
    return text + (" base" if row.baseline else "")


def _params(searched: Mapping[str, Any]) -> str:
    return " ".join(
        f"{short_key(k).replace(' ', '.')}={short_value(v)}" for k, v in searched.items()
    )


def leaderboard_table(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    searched: Sequence[str],
    title: str = "leaderboard",
    width: int | None = None,
    top: int | None = 10,
    objectives: Sequence[str] = (),
) -> Table:
    """The leaderboard (`raysl.tracking.board.columns`) of `rank_trials` rows, the first `top`.

    On a console narrower than the table, searched columns are left out from the last one on
    (named in the caption, all of them are in the leaderboard files) rather than every cell cut.
    """
    from raysl.tracking.board import columns

    shown = list(searched)
    listed = rows[:top] if top else rows
    while True:
        table = _board(listed, metric, columns(metric, shown, listed, objectives), title)
        left_out = [k for k in searched if k not in shown]
        notes = (
            ["base: the baseline (the base config)"] if any(r.get("baseline") for r in rows) else []
        )
        if left_out:
            notes.append(f"not shown (narrow terminal): {', '.join(left_out)}")
        if notes:
            table.caption = "; ".join(notes)
        if width is None or not shown or _min_width(table) <= width:
            return table
        shown.pop()


def _board(
    rows: Sequence[Mapping[str, Any]], metric: str, cols: list[tuple[str, str]], title: str
) -> Table:
    from raysl.tracking.board import cell

    table = Table(
        title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False
    )  # one space between columns: the quickstart's board fits 80 columns
    for label, key in cols:
        left = key in ("status", "number")
        table.add_column(_header(label), justify="left" if left else "right", no_wrap=True)
    for row in rows:
        style = _STATUS_STYLE.get(str(row.get("status")), "")
        cells = [cell(row, key, metric) for _, key in cols]
        cells[2] = f"[{style}]{escape(cells[2])}[/]" if style else escape(cells[2])
        table.add_row(*cells)
    return table


def _header(label: str, width: int = 9) -> str:
    """A column label on several short lines: words on their own line, long words broken
    after a `/` (`val/` / `knn_top1`) or an underscore (`crop_min_` / `scale`)."""
    lines: list[str] = []
    for word in label.split(" "):
        sep = "/" if "/" in word else "_"
        if len(word) <= width or sep not in word:
            lines.append(word)
            continue
        line = ""
        for part in word.split(sep):
            piece = part if not line else f"{sep}{part}"
            if line and len(line) + len(piece) > width:
                lines.append(line + sep)
                line = part
            else:
                line += piece
        lines.append(line)
    return "\n".join(lines)


def _min_width(table: Table) -> int:
    from rich.console import Console

    console = Console(width=1000)
    return console.measure(table).maximum
