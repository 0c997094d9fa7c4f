"""`raysl tune`: a hyperparameter study over a search-space file (Ray Tune + Optuna + ASHA + MLflow)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from raysl.errors import ConfigError, Problem
from raysl.runfile import parse_overrides

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=_SETTINGS)
@click.argument("space_file", metavar="SPACE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--num-samples", type=int, help="Trials to run (overrides tune.num_samples).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a dotted key of the base config or of tune (e.g. tune.seed=1); repeatable.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted study (same SPACE and --out): finished trials are kept, the rest run.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Study directory (log, study state, leaderboard). Default: runs/<name>.",
)
@click.option(
    "--storage",
    help="Where Tune keeps trials and checkpoints: a path shared by all nodes or a URI (s3://, gs://, file://). Default: the parent of --out.",
)
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory.",
)
@click.option("--address", help="Ray cluster to join (e.g. auto). Default: start a local one.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No live table: one line per finished trial, then the leaderboard.",
)
def tune(
    space_file: Path,
    num_samples: int | None,
    overrides: tuple[str, ...],
    resume: bool,
    out: Path | None,
    storage: str | None,
    tracking_uri: str | None,
    address: str | None,
    quiet: bool,
) -> None:
    """Search the space in SPACE: Optuna proposes configs, ASHA stops poor trials early,
    every trial is logged to MLflow as a child of the study's parent run.

    \b
      raysl tune search_spaces/quickstart.yaml        # ~3 minutes on 2 CPU cores
      raysl ui                                        # compare the trials in MLflow
      raysl report quickstart                         # the leaderboard, also as Parquet/CSV

    A trial with tune.resources.workers = 1 runs the training loop inside the Tune trial;
    with more workers it launches a Ray Train run (DDP) per trial. The study's metric is
    reported on the val split every epoch; no trial sees the test split: when the
    study completes, the best trial's checkpoint is evaluated on it and logged as an MLflow
    model (registered as tune.register, if set).
    """
    from raysl.search import load_search_spec

    spec = load_search_spec(space_file, parse_overrides(overrides), num_samples=num_samples)
    if not spec.params:
        raise ConfigError(
            Problem(
                "has no search: section; train it with `raysl train` instead",
                key="search",
                where=str(space_file),
            )
        )
    out = out or Path("runs") / spec.name
    storage = storage or str(out.resolve().parent)
    if not resume and (out / "study.json").exists():
        raise ConfigError(
            Problem(
                f"{out} already holds a study; pass --resume to continue it, or choose another --out",
                key="--out",
            )
        )
    if resume and not (out / "study.json").is_file():
        raise ConfigError(
            Problem(
                f"{out} holds no study to resume (no study.json); start the study without "
                "--resume, or give the --out of the study to continue",
                key="--resume",
            )
        )

    from raysl.tracking import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(tracking_uri)
    created = not out.exists()
    # the topmost directory this command creates (runs/ too on a first study): removed on refusal
    top = next((p for p in reversed([out, *out.parents]) if not p.exists()), out)
    out.mkdir(parents=True, exist_ok=True)
    _log_to_file(out / "raysl.log")

    from raysl.launch.ray_tune import run_study

    try:
        result = run_study(
            spec,
            out,
            storage,
            tracking_uri,
            resume=resume,
            address=address,
            live=False if quiet else None,
        )
    except ConfigError:
        if created and not resume:
            shutil.rmtree(top, ignore_errors=True)
        raise
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted; continue with: raysl tune {space_file} --out {out} --resume", err=True
        )
        sys.exit(130)
    if result["best"] is None:
        click.echo(
            "error: no trial finished an epoch; see the log: " + str(out / "raysl.log"), err=True
        )
        sys.exit(1)


def _log_to_file(path: Path) -> None:
    from raysl.cli.train import _log_to_file as route

    route(path)
