"""`raysl report NAME`: the leaderboard of the newest study of a search space, from MLflow."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import click


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
    "--metric",
    help="Metric that ranks the trials [default: the study's tune.metric (a multi-objective "
    "study: its Pareto front), else val/knn_top1].",
)
@click.option(
    "--mode",
    type=click.Choice(["max", "min"]),
    help="Whether a higher or a lower value ranks first [default: the study's, else max].",
)
def report(
    name: str,
    tracking_uri: str | None,
    top: int,
    out: Path | None,
    metric: str | None,
    mode: str | None,
) -> None:
    """Rank the trials of the newest study of search space NAME (an MLflow experiment).

    Prints the study's summary and the top trials as `raysl tune` does: rank, Optuna trial
    number, status (stopped@5: stopped after epoch 5), the metric at the trial's last epoch
    (the ranking value), its best epoch value, the searched params. Full-budget trials rank
    first, then stopped ones, then failed ones. Every trial, with every metric, goes to
    OUT/NAME_leaderboard.parquet and .csv. The baseline trial (the base config) is marked
    `base`; a study with finalists lists them first with their mean ± std over seeds (n); a
    multi-objective study lists its Pareto front first, marked ★.

    \b
      raysl report simclr_cifar10 --top 5
      raysl report simclr_cifar10 --metric train/loss --mode min --tracking-uri http://mlflow:5000
    """
    from raysl.study_console import leaderboard_table, wide_console
    from raysl.tracking import newest_study, rank_trials, resolve_tracking_uri, write_leaderboard
    from raysl.tracking.ranking import searched_keys

    out = out or Path("runs") / name
    _log_to(out / "raysl.log")
    uri = resolve_tracking_uri(tracking_uri)
    study = newest_study(uri, name)
    goals = _goals(study.parent.data.tags.get("raysl.objectives", ""), metric, mode)
    metric, mode = goals[0]
    rows = rank_trials(study, top=None, metric=metric, mode=mode)
    if len(goals) > 1:
        from raysl.tracking.pareto import pareto_board

        rows = pareto_board(rows, goals)
    parquet, csv_path = write_leaderboard(rows, out, name)

    parent = study.parent
    started = datetime.fromtimestamp(parent.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    status = parent.data.tags.get("raysl.status") or parent.info.status.lower()
    console = wide_console()
    by = ", ".join(f"{m} ({d})" for m, d in goals)
    by += ", Pareto front first" if len(goals) > 1 else ""
    console.print(
        f"[bold]{name}[/]: study {parent.info.run_name} ({status}, started {started}); "
        f"top {min(top, len(rows))} of {len(rows)} trials by {by}",
        soft_wrap=False,  # wrapped at words on a narrow terminal
    )
    if parent.data.tags.get("raysl.summary"):
        console.print(parent.data.tags["raysl.summary"], markup=False, highlight=False)
    objectives = [m for m, _ in goals] if len(goals) > 1 else []
    table = leaderboard_table(
        rows, metric, searched_keys(study), title="", width=console.width, top=top,
        objectives=objectives,
    )  # fmt: skip
    console.print(table)
    console.print(f"leaderboard: {parquet} and {csv_path.name}")


def _goals(tag: str, metric: str | None, mode: str | None) -> list[tuple[str, str]]:
    """What ranks the trials: `--metric`/`--mode`, else the study's objectives (its tag
    `raysl.objectives`, `val/knn_top1:max,cost/device_hours:min`), else val/knn_top1, max."""
    study = [tuple(part.rsplit(":", 1)) for part in tag.split(",") if ":" in part]
    if metric is None:
        if study and mode is None:
            return study  # type: ignore[return-value]
        metric = study[0][0] if study else "val/knn_top1"
    if mode is None:
        mode = dict(study).get(metric, "max")
    return [(metric, mode)]


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
