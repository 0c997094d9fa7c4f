"""Do a study's trials, or a Ray Train run's workers, fit the Ray cluster actually joined?

Checked right after `ray_session` connects (a local cluster or `--address`), before any trial,
Ray Train run or MLflow run exists, from the resources of the alive nodes
(`ray.nodes()`):

- nothing can ever hold one trial (no node has the GPUs or CPUs one worker asks for, or the
  nodes together hold fewer workers than one trial needs) and no autoscaler can add nodes:
  `ConfigError`, one line naming the key and what the cluster has (the CLI exits 2);
- it does not fit now but the cluster runs an autoscaler with node types (a `ray up` cluster,
  KubeRay with autoscaling): a note for the terminal that the trials wait for the autoscaler
  to add nodes, instead of a silent wait.

`shortfall` is the pure part (node resources in, problem out); `check_capacity` reads the
cluster. Without this, Ray queues an infeasible trial forever and says so only in its log.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raysl.errors import ConfigError, Problem
from raysl.search import SearchSpec

_EPS = 1e-9


@dataclass(frozen=True)
class Demand:
    """What one trial (or one Ray Train run) reserves.

    Args:
        workers, cpu, gpu: `workers` bundles of `cpu` CPUs and `gpu` GPUs each.
        placement: Ray's placement strategy of the bundles (STRICT_PACK: one node;
            STRICT_SPREAD: one node each; PACK/SPREAD: any nodes).
        extra_cpu: CPUs reserved besides the bundles (a multi-worker trial's driver).
        keys: the names of (workers, cpu, gpu) in the user's input, for the message.
        where: the file the values came from ("" for command-line flags).
    """

    workers: int
    cpu: float
    gpu: float
    placement: str = "PACK"
    extra_cpu: float = 0.0
    keys: tuple[str, str, str] = ("workers", "cpu", "gpu")
    where: str = ""


def shortfall(demand: Demand, nodes: Sequence[Mapping[str, float]], cluster: str) -> Problem | None:
    """Why `demand` can never be placed on `nodes` (each a node's total resources); None if it can.

    `cluster` names the cluster in the message ("the local Ray cluster", "the cluster at X").
    """
    workers_key, cpu_key, gpu_key = demand.keys
    have = _describe(nodes, cluster)

    def problem(key: str, message: str) -> Problem:
        return Problem(f"{message}, but {have}; {_fix(key, demand)}", key=key, where=demand.where)

    per_node = [_bundles(node, demand) for node in nodes]
    if not any(per_node):
        if demand.gpu > 0 and not any(n.get("GPU", 0) >= demand.gpu - _EPS for n in nodes):
            return problem(gpu_key, f"each worker needs {demand.gpu:g} GPU on one node")
        if not any(n.get("CPU", 0) >= demand.cpu - _EPS for n in nodes):
            return problem(cpu_key, f"each worker needs {demand.cpu:g} CPU on one node")
        return problem(
            f"{cpu_key}/{gpu_key}",
            f"each worker needs {demand.cpu:g} CPU and {demand.gpu:g} GPU on the same node",
        )
    fit = _placed(per_node, demand.placement)
    if demand.extra_cpu and fit >= demand.workers:
        fit = _fit_with_extra(demand, nodes)
    if fit < demand.workers:
        extra = f" plus {demand.extra_cpu:g} CPU for the trial's driver" if demand.extra_cpu else ""
        spread = {"STRICT_PACK": " on one node", "STRICT_SPREAD": " on separate nodes"}
        return problem(
            workers_key,
            f"{demand.workers} workers of {_bundle_text(demand)}{extra} are needed"
            f"{spread.get(demand.placement, '')} (at most {fit} fit)",
        )
    return None


def check_capacity(demand: Demand, address: str | None) -> str | None:
    """Refuse `demand` if the connected cluster can never hold it; None when it fits now.

    Returns a note for the terminal when it does not fit yet but an autoscaler may add nodes.

    Raises:
        ConfigError: no node, or set of nodes, of the cluster can ever hold it.
    """
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cluster = (
        "the local Ray cluster (this machine)" if address is None else f"the cluster at {address}"
    )
    problem = shortfall(demand, nodes, cluster)
    if problem is None:
        return None
    if address is not None and autoscaler_can_add_nodes():
        return (
            f"{problem.key}: {demand.workers} x {_bundle_text(demand)} do not fit {cluster} as "
            f"it is now ({_totals(nodes)}); the trials wait for the autoscaler to add nodes "
            "(`ray status` shows its progress; Ctrl-C stops)"
        )
    raise ConfigError(problem)


def autoscaler_can_add_nodes(wait_s: float = 8.0) -> bool:
    """True when the connected cluster runs an autoscaler with node types it can launch.

    Every Ray head runs an autoscaler; on a cluster started by hand (`ray start`, `ray.init`)
    it has the read-only provider, whose node types are the running nodes themselves
    (`node_<node id>`). A `ray up` or KubeRay cluster names its node types. Read from the
    autoscaler's status in the cluster's key-value store (written every few seconds).
    """
    try:
        from ray._private import ray_constants
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get
    except ImportError:  # a Ray without these: do not guess that nodes will come
        return False
    try:
        if is_autoscaler_v2(fetch_from_server=True):  # only ray up / KubeRay clusters enable v2
            return True
    except Exception:
        pass
    deadline = time.time() + wait_s
    while True:
        try:
            raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        except Exception:
            raw = None
        if raw:
            report = json.loads(raw).get("autoscaler_report") or {}
            types = (report.get("node_type_mapping") or {}).values()
            return any(not str(t).startswith("node_") for t in types)
        if time.time() >= deadline:
            return False
        time.sleep(0.5)


# ---- helpers ------------------------------------------------------------------------------------
def _bundles(node: Mapping[str, float], demand: Demand, spare_cpu: float = 0.0) -> int:
    """How many worker bundles of `demand` fit on `node` (less `spare_cpu` CPUs)."""
    counts = []
    if demand.cpu > 0:
        counts.append(math.floor((node.get("CPU", 0) - spare_cpu) / demand.cpu + _EPS))
    if demand.gpu > 0:
        counts.append(math.floor(node.get("GPU", 0) / demand.gpu + _EPS))
    return max(0, min(counts)) if counts else demand.workers


def _fit_with_extra(demand: Demand, nodes: Sequence[Mapping[str, float]]) -> int:
    """Bundles that fit once `extra_cpu` is reserved on the node where it costs least."""
    best = 0
    for i, node in enumerate(nodes):
        if node.get("CPU", 0) < demand.extra_cpu - _EPS:
            continue
        counts = [
            _bundles(n, demand, demand.extra_cpu if j == i else 0.0) for j, n in enumerate(nodes)
        ]
        best = max(best, _placed(counts, demand.placement))
    return best


def _placed(per_node: Sequence[int], placement: str) -> int:
    """Bundles placeable at once, given how many fit on each node."""
    if placement == "STRICT_PACK":
        return max(per_node, default=0)
    if placement == "STRICT_SPREAD":
        return sum(1 for count in per_node if count)
    return sum(per_node)


def _bundle_text(demand: Demand) -> str:
    return f"{demand.cpu:g} CPU" + (f" + {demand.gpu:g} GPU" if demand.gpu else "")


def _describe(nodes: Sequence[Mapping[str, float]], cluster: str) -> str:
    return f"{cluster} has no alive node" if not nodes else f"{cluster} has {_totals(nodes)}"


def _totals(nodes: Sequence[Mapping[str, float]]) -> str:
    cpu = sum(n.get("CPU", 0) for n in nodes)
    gpu = sum(n.get("GPU", 0) for n in nodes)
    text = f"{cpu:g} CPU and {gpu:g} GPU"
    if len(nodes) > 1:
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        text += (
            f" on {len(nodes)} nodes (largest: {largest.get('CPU', 0):g} CPU, "
            f"{largest.get('GPU', 0):g} GPU)"
        )
    return text


def _fix(key: str, demand: Demand) -> str:
    if key.endswith(demand.keys[2]) and "/" not in key:
        return f"set {key} to 0 for CPU trials, or join a cluster with GPUs (--address)"
    return f"lower {key}, or join a larger cluster (--address)"


def check_study_capacity(spec: SearchSpec, address: str | None) -> str | None:
    """`check_capacity` for the trials of `spec` (`tune.resources`); see `_trainable`."""
    import ray

    from raysl.launch.session import DRIVER_RESOURCE

    r = spec.tune.resources
    # a multi-worker trial only drives a Ray Train run: a sliver of raysl's driver resource
    # where the cluster has it (local clusters raysl starts), else 0.01 CPU
    driver_cpu = 0.01 if r.workers > 1 and not ray.cluster_resources().get(DRIVER_RESOURCE) else 0
    demand = Demand(
        r.workers,
        r.cpu,
        r.gpu,
        extra_cpu=driver_cpu,
        keys=("tune.resources.workers", "tune.resources.cpu", "tune.resources.gpu"),
        where=str(spec.path),
    )
    return check_capacity(demand, address)
