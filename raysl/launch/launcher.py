"""`raysl launch`: the plan of commands that brings a cluster up and runs a study on it.

The plan is built once, from the validated cluster and search-space files; `--dry-run`
prints it, otherwise each step runs in order (and `ray down` / `kubectl delete` runs last
with `--down`, also after a failure). Ray cluster files:

1. `ray up -y CLUSTER` (also restarts Ray and the head's MLflow server when already up)
2. read the head's MLflow URI (`~/raysl/mlflow_uri`, written by `raysl.launch.head_services`)
3. `ray dashboard CLUSTER` in the background: forwards the head's dashboard to
   localhost:8265 for the job submission
4. submit the study as a Ray Job (`raysl.launch.ray_job`) and stream its logs
5. print how to reach the Ray dashboard and the MLflow UI

KubeRay RayJobs: the space goes into the ConfigMap `raysl-space` (mounted on the head), the
RayJob is applied with its entrypoint filled in, and the submitter's logs are streamed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raysl.errors import ConfigError
from raysl.launch.cluster import MLFLOW_PORT, SPACE_CONFIGMAP, SPACE_MOUNT, ClusterFile
from raysl.launch.ray_job import follow_job, study_job, submit_command, submit_study
from raysl.launch.security import security_problems
from raysl.search import SearchSpec

DASHBOARD_PORT = 8265


@dataclass
class Step:
    """One step: the command as printed, and what runs it (None: print-only)."""

    command: str
    what: str
    run: Callable[[], None] | None = None
    cleanup: bool = False  # runs last, also after a failed step (--down)


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)  # filled while it runs (job status)

    def print(self, echo: Callable[[str], None]) -> None:
        for note in self.notes:
            echo(f"note: {note}")
        for i, step in enumerate(self.steps, 1):
            echo(f"{i}. {step.command}")
            echo(f"   # {step.what}")

    def execute(self, echo: Callable[[str], None]) -> str:
        """Run every step; cleanup steps always run. Returns the job's final status."""
        for note in self.notes:
            echo(f"note: {note}")
        try:
            for step in (s for s in self.steps if not s.cleanup):
                echo(f"$ {step.command}")
                if step.run is not None:
                    step.run()
        finally:
            for step in (s for s in self.steps if s.cleanup):
                echo(f"$ {step.command}")
                if step.run is not None:
                    step.run()
        return self.state.get("status", "UNKNOWN")


def build_plan(
    cluster: ClusterFile,
    space: Path,
    spec: SearchSpec,
    overrides: Sequence[str],
    down: bool,
    echo: Callable[[str], None] = print,
    slots: int | None = None,
) -> Plan:
    """The steps of `raysl launch` for `cluster` and the search space `space`.

    `slots` (trials that fit the cluster at its largest) becomes `tune.max_concurrent` when the
    space leaves it on auto.

    Raises:
        ConfigError: the file opens a server on every interface or holds credentials (the
            doctor's security checks): nothing is planned, printed or run.
    """
    unsafe = security_problems(cluster)  # what `raysl doctor` flags never runs, whoever calls
    if unsafe:
        raise ConfigError(unsafe)
    plan = Plan()
    overrides = list(overrides)
    if spec.tune.max_concurrent is None and slots and not _sets(overrides, "tune.max_concurrent"):
        overrides.append(f"tune.max_concurrent={slots}")
        plan.notes.append(
            f"tune.max_concurrent set to {slots}: the trials that fit {cluster.path.name} at its "
            "max_workers (auto would see no GPU node of a cluster that scales from zero)"
        )
    if cluster.kind == "kuberay":
        _kuberay_steps(plan, cluster, space, spec, overrides, down, echo)
    else:
        _ray_steps(plan, cluster, space, spec, overrides, down, echo)
    return plan


def _sets(overrides: Sequence[str], key: str) -> bool:
    return any(item.split("=", 1)[0].strip() == key for item in overrides)


def _ray_steps(
    plan: Plan,
    cluster: ClusterFile,
    space: Path,
    spec: SearchSpec,
    overrides: list[str],
    down: bool,
    echo: Callable[[str], None],
) -> None:
    path = str(cluster.path)
    dashboard = f"http://127.0.0.1:{DASHBOARD_PORT}"
    job = study_job(space, cluster.storage, spec.name, overrides)
    forward: list[subprocess.Popen] = []

    def up() -> None:
        subprocess.run(["ray", "up", "-y", path], check=True)

    def read_uri() -> None:
        proc = subprocess.run(
            ["ray", "exec", path, "cat ~/raysl/mlflow_uri"], capture_output=True, text=True
        )
        found = re.findall(r"http://[\w.\-]+:\d+", proc.stdout)
        plan.state["mlflow"] = found[-1] if found else f"http://HEAD_INTERNAL_IP:{MLFLOW_PORT}"

    def open_forward() -> None:
        forward.append(
            subprocess.Popen(
                ["ray", "dashboard", path, "--port", str(DASHBOARD_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        try:
            _wait_for(dashboard, 120)
        except RuntimeError:
            forward[-1].terminate()
            raise

    def submit_and_follow() -> None:
        try:
            job_id = submit_study(job, dashboard)
            plan.state["status"] = follow_job(job_id, dashboard, echo)
        finally:
            for proc in forward:
                proc.terminate()

    auth = cluster.doc.get("auth") or {}
    identity = f"-i {auth['ssh_private_key']} " if auth.get("ssh_private_key") else ""

    def ssh_forward(host: str) -> str:
        return (
            f"ssh {identity}-N -L {MLFLOW_PORT}:{host}:{MLFLOW_PORT} "
            f"{auth.get('ssh_user', 'USER')}@$(ray get-head-ip {path})"
        )

    def reach() -> None:
        mlflow = plan.state.get("mlflow", f"http://HEAD_INTERNAL_IP:{MLFLOW_PORT}")
        host = mlflow.split("//", 1)[1].split(":", 1)[0]
        echo(f"Ray dashboard: ray dashboard {path}   then open http://localhost:{DASHBOARD_PORT}")
        echo(f"MLflow UI:     {ssh_forward(host)}   then open http://localhost:{MLFLOW_PORT}")

    plan.steps += [
        Step(f"ray up -y {path}", "start or update the cluster (head: Ray + MLflow server)", up),
        Step(
            f"ray exec {path} 'cat ~/raysl/mlflow_uri'",
            "the head's MLflow URI (its internal IP; the study finds it in MLFLOW_TRACKING_URI)",
            read_uri,
        ),
        Step(
            f"ray dashboard {path} --port {DASHBOARD_PORT} &",
            "forward the head's dashboard to this machine (kept open while the job runs)",
            open_forward,
        ),
        Step(
            submit_command(job, dashboard),
            f"run the study as a Ray Job (working_dir carries {space.name}) and stream its logs",
            submit_and_follow,
        ),
        Step(
            f"# {ssh_forward('HEAD_INTERNAL_IP')}",
            f"printed: reach the MLflow UI at localhost:{MLFLOW_PORT} (the dashboard: "
            f"ray dashboard {path})",
            reach,
        ),
    ]
    if down:
        plan.steps.append(
            Step(
                f"ray down -y {path}",
                "tear the cluster down",
                lambda: subprocess.run(["ray", "down", "-y", path], check=False),
                cleanup=True,
            )
        )


def _kuberay_steps(
    plan: Plan,
    cluster: ClusterFile,
    space: Path,
    spec: SearchSpec,
    overrides: list[str],
    down: bool,
    echo: Callable[[str], None],
) -> None:
    name = re.sub(r"[^a-z0-9-]", "-", f"{cluster.name}-{spec.name}".lower())[:50].strip("-")
    job = study_job(
        space,
        cluster.storage,
        spec.name,
        overrides,
        out=f"/home/ray/raysl/runs/{spec.name}",
        space_on_head=f"{SPACE_MOUNT}/{space.name}",
    )
    entrypoint = job.entrypoint
    doc = dict(cluster.doc)
    doc["metadata"] = {**(doc.get("metadata") or {}), "name": name}
    doc["spec"] = {**doc["spec"], "entrypoint": entrypoint}
    rendered = Path(tempfile.gettempdir()) / f"raysl-rayjob-{name}.yaml"

    def configmap() -> None:
        made = subprocess.run(
            ["kubectl", "create", "configmap", SPACE_CONFIGMAP,
             f"--from-file={space.name}={space}", "--dry-run=client", "-o", "yaml"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        subprocess.run(["kubectl", "apply", "-f", "-"], input=made.stdout, text=True, check=True)

    def apply() -> None:
        rendered.write_text(yaml.safe_dump(doc, sort_keys=False))
        subprocess.run(["kubectl", "apply", "-f", str(rendered)], check=True)

    def logs() -> None:
        proc = subprocess.run(
            ["kubectl", "logs", "-f", "--pod-running-timeout=30m", f"job/{name}"], check=False
        )
        plan.state["status"] = "SUCCEEDED" if proc.returncode == 0 else "FAILED"

    forward = (
        f"kubectl port-forward service/$(kubectl get rayjob {name} -o "
        f"jsonpath='{{.status.rayClusterName}}')-head-svc {DASHBOARD_PORT}:{DASHBOARD_PORT} "
        f"{MLFLOW_PORT}:{MLFLOW_PORT}"
    )
    plan.steps += [
        Step(
            f"kubectl create configmap {SPACE_CONFIGMAP} --from-file={space.name}={space} "
            "--dry-run=client -o yaml | kubectl apply -f -",
            f"the search space, mounted on the head at {SPACE_MOUNT}",
            configmap,
        ),
        Step(
            f"kubectl apply -f {rendered}",
            f"the RayJob {name} with entrypoint: {entrypoint}",
            apply,
        ),
        Step(
            f"kubectl logs -f --pod-running-timeout=30m job/{name}",
            "stream the study's logs (the RayJob's submitter follows the Ray Job)",
            logs,
        ),
        Step(
            f"# {forward}",
            "reach the Ray dashboard (8265) and MLflow (5000) from this machine",
            lambda: echo(f"Ray dashboard and MLflow UI: {forward}"),
        ),
    ]
    if down:
        plan.steps.append(
            Step(
                f"kubectl delete rayjob {name}",
                "delete the RayJob and its RayCluster",
                lambda: subprocess.run(["kubectl", "delete", "rayjob", name], check=False),
                cleanup=True,
            )
        )


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the dashboard did not answer at {url} within {timeout:.0f} s")
