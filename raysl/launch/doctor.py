"""`raysl doctor` on a running cluster: one tiny probe per alive node, and a gloo group across them.

Each node is probed by a zero-CPU Ray task pinned to it (`NodeAffinitySchedulingStrategy`):
Ray, Python and torch versions (compared with the head's), the GPUs torch sees (compared with
the GPUs Ray advertises), a probe file written to and deleted from the shared storage, and the
MLflow server's `/health`. With two or more nodes, one actor per node joins a gloo process
group and all-reduces a tensor. Every failure becomes one `Finding`: the node, the problem,
the fix.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

PROBE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Finding:
    node: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"node {self.node}: {self.problem} — fix: {self.fix}"


def check_cluster_nodes(
    storage: str, tracking_uri: str | None, timeout: float = PROBE_TIMEOUT_S
) -> tuple[list[Finding], str]:
    """Probe every alive node of the connected cluster; returns (findings, summary line).

    `tracking_uri` None: the head's `MLFLOW_TRACKING_URI` (what a study on the cluster uses).
    """
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: "node:__internal_head__" not in n.get("Resources", {}))
    names = {n["NodeID"]: _name(n) for n in nodes}
    findings: list[Finding] = []
    head = nodes[0]
    if tracking_uri is None:
        tracking_uri = ray.get(
            _on(head["NodeID"], _environment).remote("MLFLOW_TRACKING_URI"), timeout=timeout
        )
        if not tracking_uri:
            findings.append(
                Finding(
                    names[head["NodeID"]],
                    "MLFLOW_TRACKING_URI is not set in the head's Ray processes, so studies log "
                    "to a local file",
                    "start Ray on the head as clusters/aws-gpu.yaml does (MLFLOW_TRACKING_URI="
                    "$(python -m raysl.launch.head_services ...) ray start --head ...)",
                )
            )
    refs = {n["NodeID"]: _on(n["NodeID"], _probe).remote(storage, tracking_uri) for n in nodes}
    reports: dict[str, dict[str, Any]] = {}
    for node_id, ref in refs.items():
        try:
            reports[node_id] = ray.get(ref, timeout=timeout)
        except Exception as exc:  # the node died, or no worker could start there
            findings.append(
                Finding(
                    names[node_id],
                    f"did not answer the probe ({type(exc).__name__}: {_first_line(exc)})",
                    "see the node's logs (`ray logs raylet.out --node-id ...`); check its setup "
                    "commands ran",
                )
            )
    head_report = reports.get(head["NodeID"], {})
    for node in nodes:
        report = reports.get(node["NodeID"])
        if report is not None:
            findings += _judge(names[node["NodeID"]], node, report, head_report, storage)
    formed = ""
    if len(nodes) >= 2:
        problem = _process_group([n["NodeID"] for n in nodes], timeout)
        if problem:
            findings.append(
                Finding(
                    " ↔ ".join(names[n["NodeID"]] for n in nodes),
                    f"no gloo process group formed across the nodes ({problem})",
                    "open TCP between the nodes on all ports (torch.distributed picks free ones) "
                    "and set GLOO_SOCKET_IFNAME when nodes have several interfaces",
                )
            )
        else:
            formed = f"; a gloo group of {len(nodes)} formed"
    gpus = sum(int(n["Resources"].get("GPU", 0)) for n in nodes)
    summary = (
        f"{len(nodes)} nodes, Ray {head_report.get('ray', '?')}, Python "
        f"{head_report.get('python', '?')}, torch {head_report.get('torch', '?')}, {gpus} GPUs; "
        f"storage {storage} writable from every node; MLflow {tracking_uri} reachable from "
        f"every node{formed}"
    )
    return findings, summary


def _name(node: dict[str, Any]) -> str:
    role = "head, " if "node:__internal_head__" in node.get("Resources", {}) else ""
    return f"{node['NodeManagerAddress']} ({role}{node['NodeID'][:8]})"


def _on(node_id: str, function: Any) -> Any:
    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=strategy)(function)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else ""


def _judge(
    name: str,
    node: dict[str, Any],
    report: dict[str, Any],
    head: dict[str, Any],
    storage: str,
) -> list[Finding]:
    found = []
    same = "install the head's versions on every node (same image, or the same pip pins)"
    for key, label in (("ray", "Ray"), ("python", "Python"), ("torch", "torch")):
        if head and report.get(key) != head.get(key):
            found.append(
                Finding(name, f"{label} {report.get(key)} (the head has {head.get(key)})", same)
            )
    advertised = int(node["Resources"].get("GPU", 0))
    if advertised and report.get("cuda", 0) < advertised:
        found.append(
            Finding(
                name,
                f"Ray advertises {advertised} GPUs but torch sees {report.get('cuda', 0)} "
                f"({report.get('cuda_error') or 'no CUDA'})",
                "install the NVIDIA driver and a CUDA build of torch on the node (or use the GPU image)",
            )
        )
    if report.get("storage_error"):
        found.append(
            Finding(
                name,
                f"storage {storage} is not writable ({report['storage_error']})",
                "mount the shared storage at the same path on every node (NFS) or use "
                "s3:// / gs:// with an instance role that may write there; set it in "
                "metadata.raysl.storage",
            )
        )
    if report.get("mlflow_error") and report.get("mlflow_uri"):  # no URI: reported once above
        found.append(
            Finding(
                name,
                f"MLflow server {report['mlflow_uri']} is unreachable ({report['mlflow_error']})",
                "start it on the head (python -m raysl.launch.head_services "
                "~/ray_bootstrap_config.yaml), bound to the head's internal IP, and allow "
                f"TCP {report['mlflow_uri'].rsplit(':', 1)[-1]} between the nodes",
            )
        )
    return found


# ---- what runs on the nodes --------------------------------------------------------------------
def _environment(name: str) -> str | None:
    import os

    return os.environ.get(name)


def _probe(storage: str, tracking_uri: str | None) -> dict[str, Any]:
    """Versions, GPUs, a storage write and the MLflow server, as seen from this node."""
    import platform

    report: dict[str, Any] = {"python": platform.python_version(), "ray": ray.__version__}
    try:
        import torch

        report["torch"] = torch.__version__.split("+")[0]
        report["cuda"], report["cuda_error"] = _cuda_devices()
    except ImportError as exc:
        report["torch"], report["cuda"], report["cuda_error"] = f"missing ({exc})", 0, str(exc)
    report["storage_error"] = _write_probe(storage)
    report["mlflow_uri"] = tracking_uri or ""
    report["mlflow_error"] = _mlflow_problem(tracking_uri)
    return report


def _cuda_devices() -> tuple[int, str]:
    """GPUs torch sees in a fresh process (Ray hides GPUs from a task that asked for none)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    code = "import torch; print(torch.cuda.device_count())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        return 0, (proc.stderr.strip().splitlines() or ["torch failed"])[-1]
    return int(proc.stdout.strip() or 0), ""


def _write_probe(storage: str) -> str | None:
    import os

    import pyarrow.fs

    try:
        if "://" in storage:
            fs, base = pyarrow.fs.FileSystem.from_uri(storage)
        else:
            fs, base = pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(storage))
        folder = f"{base.rstrip('/')}/.raysl-doctor"
        fs.create_dir(folder, recursive=True)
        path = f"{folder}/{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(path) as out:
            out.write(b"raysl doctor probe\n")
        fs.delete_file(path)
    except Exception as exc:
        return f"{type(exc).__name__}: {_first_line(exc)}"
    return None


def _mlflow_problem(uri: str | None) -> str | None:
    import urllib.request

    if not uri:
        return "no tracking URI"
    if not uri.startswith(("http://", "https://")):
        return f"{uri.split(':', 1)[0]} is a local store, not shared by the nodes; use the head's server"
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}"


@ray.remote(num_cpus=0)
class _Member:
    """One rank of the test process group."""

    def address(self) -> tuple[str, int]:
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def all_reduce(self, init: str, rank: int, world: int, timeout_s: float) -> float:
        import datetime

        import torch
        import torch.distributed as dist

        dist.init_process_group(
            "gloo",
            init_method=init,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        try:
            value = torch.ones(1)
            dist.all_reduce(value)
            return float(value.item())
        finally:
            dist.destroy_process_group()


def _process_group(node_ids: list[str], timeout: float) -> str | None:
    """None when a gloo group with one rank per node forms and all-reduces; else the reason."""
    members = [
        _Member.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
        for n in node_ids
    ]
    try:
        ip, port = ray.get(members[0].address.remote(), timeout=timeout)
        init = f"tcp://{ip}:{port}"
        world = len(members)
        refs = [m.all_reduce.remote(init, r, world, timeout / 2) for r, m in enumerate(members)]
        values = ray.get(refs, timeout=timeout)
        if any(v != world for v in values):
            return f"all_reduce gave {values}, expected {world} on every rank"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        for member in members:
            ray.kill(member)
