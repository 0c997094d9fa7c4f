"""`raysl doctor` and the Ray-Job study path against a real two-node Ray cluster on this machine.

One module-scoped cluster (a head with the dashboard + a second node, 1 CPU each) and one
MLflow server started by `raysl.launch.head_services` (as a cluster's head does, bound to
127.0.0.1 here). The nodes are started with `MLFLOW_TRACKING_URI` in their environment, as the
shipped cluster files start Ray, so the doctor and the study find the server on their own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, run_cli
from tests.launch.test_ray_tune import study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ONPREM = REPO / "clusters" / "onprem.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("cluster")
    storage = tmp / "storage"
    config = tmp / "cluster.yaml"
    config.write_text(ONPREM.read_text().replace("storage: /mnt/raysl", f"storage: {storage}"))
    port = free_port()
    server = subprocess.run(
        [sys.executable, "-m", "raysl.launch.head_services", str(config),
         "--host", "127.0.0.1", "--port", str(port), "--home", str(tmp / "head")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert server.returncode == 0, server.stderr
    uri = server.stdout.strip()
    assert uri == f"http://127.0.0.1:{port}"
    mlflow_pid = int((tmp / "head" / "mlflow.pid").read_text())

    dashboard = free_port()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    # the nodes' processes (and so jobs and trials) inherit these, as `ray start` passes them on
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
    head_args = {
        "num_cpus": 1,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard,
    }
    ray_cluster = None
    try:
        ray_cluster = Cluster(initialize_head=True, head_node_args=head_args)
        ray_cluster.add_node(num_cpus=1)
        ray_cluster.wait_for_nodes()
        yield {
            "address": ray_cluster.address,
            "dashboard": f"http://127.0.0.1:{dashboard}",
            "storage": str(storage),
            "uri": uri,
            "config": str(config),
            "tmp": str(tmp),
        }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if ray_cluster is not None:
            ray_cluster.shutdown()
        os.killpg(mlflow_pid, signal.SIGTERM)  # the server this fixture started, by its pid


def _doctor(cluster: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("doctor", cluster["config"], "--address", cluster["address"], *extra, cwd=REPO)


NODE = r"node \d+\.\d+\.\d+\.\d+ \((head, )?[0-9a-f]{8}\): "


def test_doctor_reports_a_healthy_cluster(cluster: dict[str, str]) -> None:
    proc = _doctor(cluster)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("healthy: ") and "2 nodes" in last, proc.stdout
    assert f"storage {cluster['storage']} writable from every node" in last
    assert f"MLflow {cluster['uri']} reachable from every node" in last  # the head's env
    assert "a gloo group of 2 formed" in last
    assert not list(Path(cluster["storage"], ".raysl-doctor").iterdir())  # probes cleaned up


def test_doctor_reports_an_unwritable_storage_path(cluster: dict[str, str]) -> None:
    blocker = Path(cluster["tmp"]) / "a_file"
    blocker.write_text("not a directory")
    storage = str(blocker / "storage")
    proc = _doctor(cluster, "--storage", storage)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("node ")]
    assert len(problems) == 2, proc.stdout  # one line per node, nothing else wrong
    for line in problems:
        assert re.match(NODE + re.escape(f"storage {storage} is not writable ("), line), line
        assert " — fix: mount the shared storage" in line
    assert len({line.split(":")[0] for line in problems}) == 2  # each node named once
    assert proc.stdout.strip().endswith("unhealthy: 2 problem(s)")


def test_doctor_reports_a_down_mlflow_server(cluster: dict[str, str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = _doctor(cluster, "--tracking-uri", down)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("node ")]
    assert len(problems) == 2, proc.stdout
    for line in problems:
        assert re.match(NODE + re.escape(f"MLflow server {down} is unreachable ("), line), line
        assert "— fix: start it on the head (python -m raysl.launch.head_services" in line


def test_study_submitted_as_a_ray_job_logs_to_mlflow(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    """The path `raysl launch` takes after `ray up`: study_job -> submit_study -> follow_job."""
    from mlflow.tracking import MlflowClient

    from raysl.launch.ray_job import follow_job, study_job, submit_study

    space = study_file(tmp_path, name="job_study", num_samples=2, scheduler="none")
    job = study_job(space, cluster["storage"], "job_study", ["epochs=1"], out=str(tmp_path / "out"))
    assert "--tracking-uri" not in job.entrypoint  # found in the head's MLFLOW_TRACKING_URI
    lines: list[str] = []
    job_id = submit_study(job, cluster["dashboard"])
    status = follow_job(job_id, cluster["dashboard"], echo=lines.append, timeout=500)
    assert status == "SUCCEEDED", "\n".join(lines[-60:])
    assert any("leaderboard" in line for line in lines)  # the study's own output, streamed

    client = MlflowClient(cluster["uri"])
    experiment = client.get_experiment_by_name("job_study")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("raysl.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("raysl.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.data.params["epochs"] == "1" for c in children)  # --set reached the trials
