"""KubeRay RayJob cluster files (`kind: RayJob`), checked structurally before anything starts.

The ray package has no schema for them, so the embedded RayCluster spec is checked here: a
head group with a `ray-head` container, a GPU worker group (`nvidia.com/gpu` limit) with
`minReplicas: 0`, in-tree autoscaling, and the storage annotation `raysl.io/storage` on the
head pod. Every problem is one line naming the file, the dotted key and its line.
`raysl.launch.cluster.load_cluster_file` calls `load_rayjob` for a RayJob.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raysl.errors import ConfigError, Problem, shorten
from raysl.launch.cluster import KUBERAY_STORAGE_ANNOTATION, ClusterFile, NodeType


def load_rayjob(path: Path, doc: dict[str, Any], lines: dict[str, int]) -> ClusterFile:
    where = str(path)
    problems: list[Problem] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(Problem(message, key=key, where=where, line=_line(lines, key)))

    def mapping(parent: Mapping[str, Any], name: str, key: str) -> Mapping[str, Any]:
        """`parent[name]` if it is a mapping (absent: {}), else a problem and {}."""
        value = parent.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):  # nothing below it can be checked: stop here
            raise ConfigError(
                Problem(
                    f"must be a mapping (got {shorten(value)}); see clusters/kuberay-rayjob.yaml",
                    key=key,
                    where=where,
                    line=_line(lines, key),
                )
            )
        return value

    need(str(doc.get("apiVersion", "")).startswith("ray.io/"), "apiVersion", "must be ray.io/v1")
    spec = mapping(doc, "spec", "spec")
    need(bool(spec), "spec", "the RayJob has no spec")
    cluster = mapping(spec, "rayClusterSpec", "spec.rayClusterSpec")
    need(bool(cluster), "spec.rayClusterSpec", "add the RayCluster spec (head and worker groups)")
    need(
        cluster.get("enableInTreeAutoscaling") is True,
        "spec.rayClusterSpec.enableInTreeAutoscaling",
        "set to true so GPU workers scale from zero",
    )
    head_key = "spec.rayClusterSpec.headGroupSpec"
    head = mapping(cluster, "headGroupSpec", head_key)
    head_containers = _containers(head, head_key, need)
    need(
        head_containers is None or bool(head_containers),
        head_key,
        "needs template.spec.containers with the ray-head container",
    )
    groups = cluster.get("workerGroupSpecs") or []
    need(
        isinstance(groups, list) and bool(groups),
        "spec.rayClusterSpec.workerGroupSpecs",
        "add a GPU worker group (a list of worker group specs)",
    )
    types = [_pod_type("head", head, head_key, need, head=True)] if head_containers else []
    for i, group in enumerate(groups if isinstance(groups, list) else []):
        key = f"spec.rayClusterSpec.workerGroupSpecs.{i}"
        if not isinstance(group, Mapping):
            need(False, key, f"a worker group must be a mapping (got {shorten(group)})")
            continue
        need(bool(group.get("groupName")), key, "every worker group needs a groupName")
        containers = _containers(group, key, need)
        need(containers is None or bool(containers), key, "needs template.spec.containers")
        types.append(_pod_type(str(group.get("groupName", i)), group, key, need))
    gpu_groups = [t for t in types if t.gpu > 0 and not t.head]
    need(
        bool(gpu_groups) or bool(problems),
        "spec.rayClusterSpec.workerGroupSpecs",
        "no worker group asks for GPUs; set resources.limits nvidia.com/gpu in one",
    )
    for t in gpu_groups:
        need(
            t.min_workers == 0,
            "spec.rayClusterSpec.workerGroupSpecs",
            f"GPU group {t.name}: set minReplicas: 0 so idle GPUs are released",
        )
    template = mapping(head, "template", f"{head_key}.template")
    metadata = mapping(template, "metadata", f"{head_key}.template.metadata")
    annotations = mapping(metadata, "annotations", f"{head_key}.template.metadata.annotations")
    storage = annotations.get(KUBERAY_STORAGE_ANNOTATION)
    need(
        bool(storage) and isinstance(storage, str),
        f"{head_key}.template.metadata.annotations",
        f"set {KUBERAY_STORAGE_ANNOTATION}: s3://BUCKET/raysl (or gs://, or an RWX volume path)",
    )
    if problems:
        raise ConfigError(problems)
    name = str(mapping(doc, "metadata", "metadata").get("name", path.stem))
    return ClusterFile(path, "kuberay", "kuberay", name, str(storage), tuple(types), doc, lines)


def _line(lines: Mapping[str, int], key: str) -> int | None:
    while key and key not in lines:
        key = key.rpartition(".")[0]
    return lines.get(key)


def _containers(group: Mapping[str, Any], key: str, need: Any) -> list[Mapping[str, Any]] | None:
    """The group's `template.spec.containers`; None (and a problem) if they are not a list."""
    template = group.get("template") or {}
    pod = (template.get("spec") or {}) if isinstance(template, Mapping) else {}
    containers = (pod.get("containers") or []) if isinstance(pod, Mapping) else []
    if not isinstance(containers, list):
        need(False, f"{key}.template.spec.containers", "must be a list of containers")
        return None
    return [c for c in containers if isinstance(c, Mapping)]


def _pod_type(
    name: str, group: Mapping[str, Any], key: str, need: Any, head: bool = False
) -> NodeType:
    """Resources of the group's Ray container (the first one), from its limits."""
    containers = _containers(group, key, lambda *args: None)
    resources = (containers[0].get("resources") or {}) if containers else {}
    limits = (resources.get("limits") or {}) if isinstance(resources, Mapping) else {}
    if not isinstance(limits, Mapping):
        need(False, f"{key}.template.spec.containers.0.resources.limits", "must be a mapping")
        limits = {}
    limit_key = f"{key}.template.spec.containers.0.resources.limits"

    def number(value: Any, at: str, what: str, milli: bool = False) -> float:
        text = str(value).strip()
        scale = 1.0
        if milli and text.endswith("m"):
            text, scale = text[:-1], 1e-3
        try:
            found = float(text) * scale
        except ValueError:
            found = -1.0
        if not (found >= 0 and found != float("inf")) or isinstance(value, bool):
            need(False, at, f"must be {what} (got {shorten(value)})")
            return 0.0
        return found

    cpus = number(limits.get("cpu", 0), f"{limit_key}.cpu", "a CPU count like 4 or 500m", True)
    gpus = number(limits.get("nvidia.com/gpu", 0), f"{limit_key}.nvidia.com/gpu", "a GPU count")

    def count(field_name: str) -> int:
        value = group.get(field_name, 0)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        need(False, f"{key}.{field_name}", f"must be an integer >= 0 (got {shorten(value)})")
        return 0

    return NodeType(
        name,
        cpus,
        gpus,
        0 if head else count("minReplicas"),
        0 if head else count("maxReplicas"),
        head=head,
    )
