"""`raysl launch`: bring a cluster up, run a study on it as a Ray Job, optionally tear it down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from raysl.errors import ConfigError
from raysl.runfile import parse_overrides

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=_SETTINGS)
@click.argument("cluster_file", metavar="CLUSTER", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("space_file", metavar="SPACE", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a dotted key of the base config or of tune; passed on to raysl tune. Repeatable.",
)
@click.option(
    "--down", is_flag=True, help="Tear the cluster down at the end (also after a failure)."
)
@click.option("--dry-run", is_flag=True, help="Print every command it would run; change nothing.")
def launch(
    cluster_file: Path, space_file: Path, overrides: tuple[str, ...], down: bool, dry_run: bool
) -> None:
    """Run the study in SPACE on the cluster in CLUSTER: `ray up`, the study as a Ray Job
    (`raysl tune` on the head, logging to the head's MLflow server), its logs streamed here.

    \b
      raysl launch clusters/aws-gpu.yaml search_spaces/simclr_cifar10.yaml --dry-run
      raysl launch clusters/aws-gpu.yaml search_spaces/simclr_cifar10.yaml --down
      raysl launch clusters/kuberay-rayjob.yaml search_spaces/simclr_cifar10.yaml

    Both files are checked first (as `raysl doctor` does); a problem stops it before anything
    starts. With tune.max_concurrent on auto it is set to the trials that fit the cluster at
    its max_workers.
    """
    from raysl.launch.checks import check_cluster, trial_slots
    from raysl.launch.cluster import load_cluster_file
    from raysl.launch.launcher import build_plan
    from raysl.search import load_search_spec

    cluster = load_cluster_file(cluster_file)
    spec = load_search_spec(space_file, parse_overrides(overrides))
    if not spec.params:
        raise ConfigError(f"{space_file}: has no search: section; nothing to launch")
    errors, warnings = check_cluster(cluster, [spec])
    if errors:
        raise ConfigError(errors)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    plan = build_plan(
        cluster,
        space_file,
        spec,
        overrides,
        down,
        echo=click.echo,
        slots=trial_slots(cluster, spec),
    )
    if dry_run:
        plan.print(click.echo)
        return
    try:
        status = plan.execute(click.echo)
    except subprocess.CalledProcessError as exc:
        command = " ".join(str(word) for word in exc.cmd)
        click.echo(
            f"error: `{command}` failed (exit {exc.returncode}); see its output above", err=True
        )
        sys.exit(1)
    except (RuntimeError, ConnectionError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"study job: {status}")
    if status != "SUCCEEDED":
        sys.exit(1)
