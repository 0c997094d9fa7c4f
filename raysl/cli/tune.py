"""`raysl tune`: a hyperparameter study over a search-space file (Ray Tune + Optuna + ASHA + MLflow)."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import click

from raysl.errors import ConfigError, Problem, cut
from raysl.runfile import parse_overrides
from raysl.yamlio import read_text

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
    help="Where Tune keeps trials and checkpoints (in <storage>/<name of --out>): a path shared by all nodes or a URI (s3://, gs://, file://). Default: the parent of --out.",
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
    again = _resume_command(
        space_file, out, num_samples, overrides, storage, tracking_uri, address, quiet
    )
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
    if resume:
        check_study_state(out / "study.json")

    from raysl.outputs import (
        check_no_earlier_study,
        check_output_dir,
        check_storage,
        experiment_name,
    )
    from raysl.tracking import resolve_tracking_uri
    from raysl.tracking.store import sqlite_path

    tracking_uri = resolve_tracking_uri(tracking_uri)
    check_output_dir(out, "--out")  # all before Ray, MLflow or any file starts
    check_storage(storage)
    if not resume:
        check_no_earlier_study(storage, experiment_name(out), out)
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        check_output_dir(db.parent, "--tracking-uri")
    if address:
        from raysl.launch.address import check_address

        check_address(address)
    started = time.time()
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
        if not (out / "study.json").is_file():  # before the study began: nothing to resume
            if created:
                shutil.rmtree(top, ignore_errors=True)
            click.echo("\ninterrupted before the study started; nothing was kept", err=True)
        else:
            click.echo(
                f"\ninterrupted; continue with: {again}{_finished(out, started, spec.tune.num_samples)}",
                err=True,
            )
        sys.exit(130)
    if result["best"] is None:
        click.echo(
            "error: no trial finished an epoch; see the log: " + str(out / "raysl.log"), err=True
        )
        sys.exit(1)


def check_study_state(path: Path) -> None:
    """Refuse a `study.json` that is not the state `run_study` writes (corrupt, or another
    shape), before `--resume` starts anything."""
    fix = "restore it from a copy, or start the study again without --resume in another --out"
    try:
        state = json.loads(read_text(path, limit=1 << 20))
    except ConfigError as error:
        raise ConfigError(Problem(f"{error.problems[0].message}; {fix}", where=str(path))) from None
    except ValueError as error:
        raise ConfigError(
            Problem(f"corrupt study state (not JSON: {cut(str(error))}); {fix}", where=str(path))
        ) from None
    if not isinstance(state, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(state), "a number")
        raise ConfigError(
            Problem(
                f"not a raysl study state (it holds {kind}, not an object); {fix}", where=str(path)
            )
        )
    if (
        not isinstance(state.get("optuna_study"), str)
        or not state["optuna_study"]
        or not isinstance(state.get("parent_run_id", ""), str)
    ):
        raise ConfigError(
            Problem(
                "not a raysl study state (optuna_study must be a non-empty string and "
                f"parent_run_id a string); {fix}",
                where=str(path),
            )
        )


def _resume_command(
    space: Path, out: Path, num_samples, overrides, storage, tracking_uri, address, quiet
) -> str:
    """The command that continues this study: this one's own options, with --resume."""
    args = ["raysl", "tune", str(space), "--out", str(out), "--resume"]
    if num_samples is not None:
        args += ["--num-samples", str(num_samples)]
    for item in overrides:
        args += ["--set", item]
    for flag, value in (
        ("--storage", storage),
        ("--tracking-uri", tracking_uri),
        ("--address", address),
    ):
        if value:
            args += [flag, value]
    if quiet:
        args.append("-q")
    return " ".join(shlex.quote(a) for a in args)


def _finished(out: Path, since: float, total: int) -> str:
    """How many of the `total` trials finished, from the leaderboard the study wrote as it
    ended (written after `since`); "" when it wrote none."""
    path = out / "leaderboard.json"
    try:
        if path.stat().st_mtime < since:
            return ""
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    done = sum(1 for row in rows if row.get("status") in ("completed", "stopped", "failed"))
    return (
        f"  ({done} of {total} trials finished; the study's MLflow run is tagged "
        "raysl.status=interrupted)"
    )


def _log_to_file(path: Path) -> None:
    from raysl.cli.train import _log_to_file as route

    route(path)
