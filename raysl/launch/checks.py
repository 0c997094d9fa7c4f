"""raysl's expectations of a cluster file, beyond Ray's schema: what makes studies work on it.

`check_cluster` returns errors (the study would fail or leak: no GPU node type, no MLflow
server on the head, a dashboard or server open on 0.0.0.0, credentials in the file, trials
that fit no node) and warnings (it would run, but not as the user probably wants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from raysl.errors import Problem
from raysl.launch.cluster import ClusterFile
from raysl.launch.security import security_problems
from raysl.search import SearchSpec

_SHARED_SCHEMES = ("s3://", "gs://", "abfss://", "hdfs://")


def check_cluster(
    cluster: ClusterFile, specs: Sequence[SearchSpec] = ()
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) for `cluster` and the search spaces meant to run on it."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    errors += security_problems(cluster)
    if cluster.provider == "local" and not cluster.storage.startswith((*_SHARED_SCHEMES, "/")):
        errors.append(
            cluster.problem(
                f"{cluster.storage!r} is not an absolute path: each on-prem node would resolve "
                "it in its own working directory, so the nodes would not share checkpoints; give "
                "the absolute path of the NFS mount present on every node (e.g. /mnt/raysl)",
                "metadata.raysl.storage",
            )
        )
    elif not cluster.storage.startswith((*_SHARED_SCHEMES, "/")):
        errors.append(
            cluster.problem(
                f"{cluster.storage!r} is not shared between nodes; use s3://, gs:// or an "
                "absolute path of an NFS mount present on every node",
                "metadata.raysl.storage",
            )
        )
    if cluster.kind == "ray":
        _check_ray_yaml(cluster, errors, warnings)
    gpu_types = [t for t in cluster.node_types if t.gpu > 0 and not t.head]
    for t in gpu_types:
        if t.min_workers > 0:
            warnings.append(
                cluster.problem(
                    f"GPU node type {t.name} keeps {t.min_workers} node(s) running when idle; "
                    "min_workers: 0 scales it to zero",
                    f"available_node_types.{t.name}.min_workers",
                )
            )
    for t in cluster.node_types:
        if t.head and t.gpu > 0:
            warnings.append(
                cluster.problem(
                    f"the head node type {t.name} has GPUs; a CPU head is cheaper (it runs the "
                    "study driver and MLflow)",
                    f"available_node_types.{t.name}",
                )
            )
    for spec in specs:
        _check_space(cluster, spec, errors, warnings)
    return errors, warnings


def _check_ray_yaml(cluster: ClusterFile, errors: list[Problem], warnings: list[Problem]) -> None:
    doc = cluster.doc
    if cluster.provider != "local" and not any(t.gpu > 0 for t in cluster.node_types if not t.head):
        errors.append(
            cluster.problem(
                "no worker node type declares GPUs; add one with resources: {CPU: N, GPU: M}",
                "available_node_types",
            )
        )
    head_start = " ; ".join(str(c) for c in doc.get("head_start_ray_commands") or [])
    if "raysl.launch.head_services" not in head_start and "mlflow server" not in head_start:
        errors.append(
            cluster.problem(
                "no MLflow server is started on the head; add `python -m "
                "raysl.launch.head_services ~/ray_bootstrap_config.yaml` as in "
                "clusters/aws-gpu.yaml",
                "head_start_ray_commands",
            )
        )


def _check_space(
    cluster: ClusterFile, spec: SearchSpec, errors: list[Problem], warnings: list[Problem]
) -> None:
    r = spec.tune.resources
    where = str(spec.path)
    types = [t for t in cluster.node_types if not t.head or t.cpu > 0]
    if not cluster.node_types:  # the local provider: resources are found on the machines
        return
    if not any(t.cpu >= r.cpu and t.gpu >= r.gpu for t in types):
        have = ", ".join(f"{t.name} ({t.cpu:g} CPU, {t.gpu:g} GPU)" for t in cluster.node_types)
        errors.append(
            Problem(
                f"a trial worker needs {r.cpu:g} CPU and {r.gpu:g} GPU on one node, but no node "
                f"type of {cluster.path} has that ({have}); lower tune.resources or add a node type",
                key="tune.resources",
                where=where,
            )
        )
        return
    if r.gpu == 0 and any(t.gpu > 0 for t in types):
        warnings.append(
            Problem(
                "trials ask for no GPU on a GPU cluster; set tune.resources.gpu (e.g. 1, or 0.5 "
                "to pack two small trials per GPU)",
                key="tune.resources.gpu",
                where=where,
            )
        )
    slots = trial_slots(cluster, spec)
    if spec.tune.max_concurrent is not None and slots and spec.tune.max_concurrent > slots:
        warnings.append(
            Problem(
                f"{spec.tune.max_concurrent} concurrent trials, but the cluster holds at most "
                f"{slots} at its largest; the rest wait",
                key="tune.max_concurrent",
                where=where,
            )
        )


def trial_slots(cluster: ClusterFile, spec: SearchSpec) -> int | None:
    """How many trials of `spec` fit at once when every node type is at its max_workers.

    None when the file declares no resources (local provider). `raysl launch` sets
    `tune.max_concurrent` to this when the space leaves it on auto: on a cluster that scales
    from zero, "auto" would see no GPU node at the start and run one trial at a time.
    """
    if not cluster.node_types:
        return None
    r = spec.tune.resources
    workers = 0
    for t in cluster.node_types:
        count = 1 if t.head else t.max_workers
        per_node = [math.floor(t.cpu / r.cpu + 1e-9)] if r.cpu else []
        if r.gpu:
            per_node.append(math.floor(t.gpu / r.gpu + 1e-9))
        workers += count * min(per_node or [0])
    return max(1, workers // r.workers)
