"""`raysl report NAME`: the leaderboard of the newest study of a search space, from MLflow."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import click

_STATUS_STYLE = {
    "completed": "green",
    "stopped": "yellow",
    "failed": "red",
    "running": "cyan",
    "interrupted": "magenta",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("name")
@click.option(
    "--tracking-uri",
    metavar="URI",
    help="MLflow store or server [default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db].",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True, help="Trials to list."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for NAME_leaderboard.parquet and .csv [default: runs/NAME].",
)
@click.option(
    "--metric", default="val/knn_top1", show_default=True, help="Metric that ranks the trials."
)
@click.option(
    "--mode",
    type=click.Choice(["max", "min"]),
    default="max",
    show_default=True,
    help="Whether a higher or a lower value ranks first.",
)
def report(
    name: str, tracking_uri: str | None, top: int, out: Path | None, metric: str, mode: str
) -> None:
    """Rank the trials of the newest study of search space NAME (an MLflow experiment).

    Prints the top trials with their searched params, status, epochs run and metrics (each
    trial's last reported value), and writes every trial to OUT/NAME_leaderboard.parquet
    and .csv. Failed trials rank after the others.

    \b
      raysl report simclr_cifar10 --top 5
      raysl report simclr_cifar10 --metric train/loss --mode min --tracking-uri http://mlflow:5000
    """
    from rich.table import Table

    from raysl.study_console import wide_console
    from raysl.tracking import newest_study, rank_trials, resolve_tracking_uri, write_leaderboard

    out = out or Path("runs") / name
    _log_to(out / "raysl.log")
    uri = resolve_tracking_uri(tracking_uri)
    study = newest_study(uri, name)
    rows = rank_trials(study, top=None, metric=metric, mode=mode)
    parquet, csv_path = write_leaderboard(rows, out, name)

    parent = study.parent
    started = datetime.fromtimestamp(parent.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    status = parent.data.tags.get("raysl.status") or parent.info.status.lower()
    searched = sorted(
        {k for run in study.trials for k in run.data.tags.get("raysl.searched", "").split(",") if k}
    )
    extra = [k for k in ("train/loss",) if k != metric and any(k in row for row in rows)]
    table = Table(header_style="bold")
    for column in ("#", "trial", "status", "epochs"):
        table.add_column(column, justify="right" if column in ("#", "epochs") else "left")
    table.add_column(metric, justify="right", style="bold")
    for key in [*searched, *extra]:
        table.add_column(key, justify="right")
    for row in rows[:top]:
        style = _STATUS_STYLE.get(row["status"], "")
        table.add_row(
            str(row["rank"]),
            str(row["trial_id"]),
            f"[{style}]{row['status']}[/]" if style else str(row["status"]),
            _cell("epochs", row["epochs"]),
            _cell(metric, row[metric]),
            *(_cell(key, row.get(key)) for key in [*searched, *extra]),
        )
    console = wide_console()
    console.print(
        f"[bold]{name}[/]: study {parent.info.run_name} ({status}, started {started}); "
        f"top {min(top, len(rows))} of {len(rows)} trials by {metric} ({mode})",
        soft_wrap=True,
    )
    console.print(table)
    console.print(f"leaderboard: {parquet} and {csv_path.name}")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if key.endswith(("top1", "top5", "acc")):
        return f"{value:.2f}"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


class _LazyFileHandler(logging.FileHandler):
    """A log file (and its directory) that appears only when something is logged."""

    def _open(self):  # type: ignore[no-untyped-def]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _log_to(path: Path) -> None:
    """MLflow's and Python's warnings go to the log file, not the terminal."""
    handler = _LazyFileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
