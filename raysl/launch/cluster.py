"""Cluster files: a Ray cluster-launcher YAML (`ray up`) or a KubeRay RayJob, checked before use.

- **Ray cluster YAMLs** are checked with Ray's own autoscaler schema (`ray-schema.json`, the
  file `ray up` validates against) and then with `prepare_config` + `validate_config`, the
  same steps `ray up` takes, so a file that passes here passes `ray up`'s checks.
- **KubeRay RayJobs** (`kind: RayJob`) have no schema in the ray package; their embedded
  RayCluster spec is checked structurally: a head group with a `ray-head` container, a GPU
  worker group (`nvidia.com/gpu` limit) with `minReplicas: 0`, in-tree autoscaling.
- **Storage** is set in one place: `metadata.raysl.storage` in a Ray YAML (`metadata` is the
  schema's field for user data that Ray does not interpret), the head pod's annotation
  `raysl.io/storage` in a RayJob. Checkpoints go to `<storage>/<study>`, MLflow artifacts to
  `<storage>/mlflow`.

`raysl.launch.kuberay` checks RayJobs; `raysl.launch.checks` holds raysl's own expectations
(GPU node type, MLflow on the head, no credentials, resources that fit the search spaces).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysl.errors import ConfigError, Problem
from raysl.yamlio import read_yaml

MLFLOW_PORT = 5000  # the head's MLflow server; the cluster files use the same number
STORAGE_KEY = "metadata.raysl.storage"
KUBERAY_STORAGE_ANNOTATION = "raysl.io/storage"
SPACE_MOUNT = "/home/ray/space"  # where a RayJob's head pod mounts the search-space ConfigMap
SPACE_CONFIGMAP = "raysl-space"


@dataclass(frozen=True)
class NodeType:
    """One kind of node: its resources and how many the autoscaler may start."""

    name: str
    cpu: float
    gpu: float
    min_workers: int
    max_workers: int
    head: bool = False


@dataclass(frozen=True)
class ClusterFile:
    """A validated cluster file.

    Args:
        kind: "ray" (a `ray up` YAML) or "kuberay" (a RayJob).
        provider: aws, gcp, local, ... for Ray YAMLs; "kuberay" for a RayJob.
        storage: the shared storage URI or mount (`metadata.raysl.storage`).
        node_types: declared node types; empty for the local provider, whose machines'
            resources Ray detects when it starts on them.
        doc: the file as read; lines: the 1-based line of every dotted key.
    """

    path: Path
    kind: str
    provider: str
    name: str
    storage: str
    node_types: tuple[NodeType, ...]
    doc: dict[str, Any] = field(repr=False)
    lines: dict[str, int] = field(repr=False)

    def problem(self, message: str, key: str = "") -> Problem:
        """A problem at `key` of this file, with its line when known."""
        return Problem(message, key=key, where=str(self.path), line=self.lines.get(key))


def load_cluster_file(path: str | Path) -> ClusterFile:
    """Read and validate a cluster file; nothing is started.

    Raises:
        ConfigError: missing file, YAML error, a schema violation or no storage; one line per
            problem naming the file, the key and the fix.
    """
    path = Path(path)
    doc, lines = read_yaml(path)
    if doc.get("kind") == "RayJob":
        from raysl.launch.kuberay import load_rayjob  # it imports this module's types

        return load_rayjob(path, doc, lines)
    return _load_ray_yaml(path, doc, lines)


# ---- Ray cluster-launcher YAMLs -----------------------------------------------------------------
def _load_ray_yaml(path: Path, doc: dict[str, Any], lines: dict[str, int]) -> ClusterFile:
    import jsonschema
    import ray.autoscaler

    where = str(path)
    schema_file = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
        key = ".".join(str(p) for p in error.path)
        problems.append(
            Problem(
                f"{_schema_message(error)} (Ray's cluster schema); fix the value, see "
                "https://docs.ray.io/en/latest/cluster/vms/references/ray-cluster-configuration.html",
                key=key,
                where=where,
                line=lines.get(key),
            )
        )
    if problems:
        raise ConfigError(problems)
    _ray_semantics(doc, where)
    storage = _storage(doc, lines, where)
    provider = str(doc["provider"].get("type", ""))
    return ClusterFile(
        path, "ray", provider, str(doc["cluster_name"]), storage, _ray_node_types(doc), doc, lines
    )


def _schema_message(error: Any) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys: {', '.join(allowed)}"
    return error.message


def _ray_semantics(doc: dict[str, Any], where: str) -> None:
    """What `ray up` checks after the schema: defaults filled in, node types consistent."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(doc)))
    except BaseException as exc:  # Ray's local-provider checks abort with SystemExit/ClickException
        if isinstance(exc, KeyboardInterrupt):
            raise
        message = str(exc) or type(exc).__name__
        raise ConfigError(
            Problem(f"{message} (Ray's cluster-launcher check); fix the file", where=where)
        ) from None


def _ray_node_types(doc: Mapping[str, Any]) -> tuple[NodeType, ...]:
    if (doc.get("provider") or {}).get("type") == "local":
        return ()  # Ray detects each machine's resources (a prepared file has one empty type)
    types = []
    head = doc.get("head_node_type")
    for name, spec in (doc.get("available_node_types") or {}).items():
        resources = spec.get("resources") or {}
        types.append(
            NodeType(
                name,
                float(resources.get("CPU", 0)),
                float(resources.get("GPU", 0)),
                int(spec.get("min_workers", 0)),
                int(spec.get("max_workers", 0 if name == head else doc.get("max_workers", 2))),
                head=name == head,
            )
        )
    return tuple(types)


def _storage(doc: Mapping[str, Any], lines: dict[str, int], where: str) -> str:
    raysl = (doc.get("metadata") or {}).get("raysl") or {}
    storage = raysl.get("storage") if isinstance(raysl, Mapping) else None
    if not storage or not isinstance(storage, str):
        raise ConfigError(
            Problem(
                "shared storage is not set; set it to s3://BUCKET/raysl, gs://BUCKET/raysl or an "
                "NFS mount present on every node (checkpoints and MLflow artifacts go there)",
                key=STORAGE_KEY,
                where=where,
                line=lines.get("metadata.raysl") or lines.get("metadata"),
            )
        )
    return storage
