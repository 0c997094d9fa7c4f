"""`raysl doctor`: check a cluster file, and with `--address` the running cluster, before a study."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from raysl.errors import ConfigError

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=_SETTINGS)
@click.argument("cluster_file", metavar="CLUSTER", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--space",
    "spaces",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A search space meant to run on the cluster: its trials must fit the nodes. Repeatable.",
)
@click.option(
    "--address",
    help="A running cluster to probe (auto on the head, or HOST:6379). Without it only the file is checked.",
)
@click.option("--storage", help="Storage to probe instead of the file's metadata.raysl.storage.")
@click.option(
    "--tracking-uri",
    help="MLflow server to probe. Default: the MLFLOW_TRACKING_URI of the head's Ray processes.",
)
def doctor(
    cluster_file: Path,
    spaces: tuple[Path, ...],
    address: str | None,
    storage: str | None,
    tracking_uri: str | None,
) -> None:
    """Check CLUSTER (a `ray up` YAML or a KubeRay RayJob) against Ray's schema and raysl's
    expectations; with --address, probe every node of the running cluster: versions, GPUs,
    storage writable, MLflow reachable, a process group across the nodes.

    \b
      raysl doctor clusters/aws-gpu.yaml --space search_spaces/simclr_cifar10.yaml
      ray exec clusters/aws-gpu.yaml 'raysl doctor ~/ray_bootstrap_config.yaml --address auto'

    One line per problem (node, problem, fix); exit status 1 when there is any, 2 for a file
    that cannot be read.
    """
    from raysl.launch.checks import check_cluster
    from raysl.launch.cluster import load_cluster_file
    from raysl.search import load_search_spec

    cluster = load_cluster_file(cluster_file)
    problems, specs = [], []
    for space in spaces:
        try:
            specs.append(load_search_spec(space))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    errors, warnings = check_cluster(cluster, specs)
    for warning in warnings:
        click.echo(f"warning: {warning}")
    lines = [f"{error}" for error in errors]
    summary = f"{cluster_file} passes Ray's schema and raysl's checks"
    if address:
        from raysl.launch.address import check_address

        check_address(address)  # a few seconds, not Ray's minutes of retries against nothing
        from raysl.launch.doctor import check_cluster_nodes
        from raysl.launch.session import ray_session

        with ray_session(address):
            findings, live = check_cluster_nodes(storage or cluster.storage, tracking_uri)
        lines += [str(finding) for finding in findings]
        summary += f"; {live}"
    for line in lines:
        click.echo(line)
    if lines:
        click.echo(f"unhealthy: {len(lines)} problem(s)")
        sys.exit(1)
    click.echo(f"healthy: {summary}")
    if not address:
        click.echo(f"probe the running cluster: raysl doctor {cluster_file} --address ADDRESS")
