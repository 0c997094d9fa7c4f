"""Trials and Ray Train runs that can never fit the cluster joined are refused up front.

`shortfall` is checked on node resources written here; the CLI cases start real local Ray
clusters (this machine: no GPU) and assert exit 2, one line naming the key, nothing on disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raysl.launch.capacity import Demand, shortfall
from tests.conftest import run_cli
from tests.launch.test_ray_tune import study_file

CPU4 = {"CPU": 4.0}
GPU_NODE = {"CPU": 8.0, "GPU": 2.0}


@pytest.mark.parametrize(
    ("demand", "nodes", "key", "text"),
    [
        (Demand(1, 1, 1), [CPU4], "gpu", "each worker needs 1 GPU on one node"),
        (Demand(1, 64, 0), [CPU4, CPU4], "cpu", "each worker needs 64 CPU on one node"),
        (Demand(1, 6, 1), [{"CPU": 8.0}, {"CPU": 2.0, "GPU": 1.0}], "cpu/gpu", "on the same node"),
        (Demand(5, 2, 0), [CPU4, CPU4], "workers", "5 workers of 2 CPU are needed (at most 4 fit)"),
        (Demand(3, 1, 1, placement="STRICT_PACK"), [GPU_NODE, GPU_NODE], "workers", "on one node (at most 2 fit)"),
        (Demand(3, 1, 0, placement="STRICT_SPREAD"), [CPU4, CPU4], "workers", "on separate nodes (at most 2 fit)"),
        (Demand(2, 1, 0, extra_cpu=0.01), [{"CPU": 2.0}], "workers", "plus 0.01 CPU for the trial's driver"),
        (Demand(1, 1, 0), [], "cpu", "has no alive node"),
    ],
)  # fmt: skip
def test_shortfall_names_the_key_and_what_the_cluster_has(
    demand: Demand, nodes: list[dict[str, float]], key: str, text: str
) -> None:
    problem = shortfall(demand, nodes, "the cluster")
    assert problem is not None and problem.key == key
    assert text in problem.message, problem.message


@pytest.mark.parametrize(
    ("demand", "nodes"),
    [
        (Demand(1, 1, 0), [{"CPU": 1.0}]),
        (Demand(4, 2, 0), [CPU4, CPU4]),  # PACK spreads when one node is not enough
        (Demand(4, 1, 0.5), [GPU_NODE]),  # fractional GPUs pack
        (Demand(2, 1, 0, extra_cpu=0.01), [{"CPU": 2.0}, {"CPU": 1.0}]),
        (Demand(2, 1, 1, placement="STRICT_SPREAD"), [GPU_NODE, GPU_NODE]),
    ],
)
def test_what_fits_is_not_refused(demand: Demand, nodes: list[dict[str, float]]) -> None:
    assert shortfall(demand, nodes, "the cluster") is None


def _space(tmp_path: Path, **resources: float) -> Path:
    space = study_file(tmp_path, name="never_fits", num_samples=2, scheduler="none")
    doc = yaml.safe_load(space.read_text())
    doc["tune"]["resources"] = resources
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    return space


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize(
    ("resources", "key", "text"),
    [
        ({"cpu": 1, "gpu": 1}, "tune.resources.gpu", "each worker needs 1 GPU on one node"),
        ({"cpu": 64}, "tune.resources.cpu", "each worker needs 64 CPU on one node"),
        ({"cpu": 1, "workers": 8}, "tune.resources.workers", "8 workers of 1 CPU are needed"),
    ],
)
def test_a_study_whose_trials_never_fit_is_refused(
    resources: dict[str, float], key: str, text: str, tmp_path: Path
) -> None:
    import os

    space = _space(tmp_path, **resources)
    runs = tmp_path / "runs"
    db = tmp_path / "mlflow.db"
    proc = run_cli(
        "tune", str(space), "--out", str(runs / "never_fits"), "--tracking-uri", f"sqlite:///{db}",
        "-q", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    line = _one_error_line(proc)
    assert f"{space}: {key}: {text}" in line, line
    assert "the local Ray cluster (this machine) has" in line
    cpus = os.cpu_count()
    assert f"has {cpus:g} CPU and 0 GPU" in line  # what the cluster joined actually has
    assert not runs.exists() and not db.exists()  # no study directory, no MLflow store
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize(
    ("flags", "key", "text"),
    [
        (["--workers", "1", "--gpus-per-worker", "1"], "--gpus-per-worker", "each worker needs 1 GPU"),
        (["--workers", "8", "--gpus-per-worker", "0"], "--workers", "8 workers of 1 CPU are needed"),
        (["--workers", "2", "--cpus-per-worker", "32", "--gpus-per-worker", "0"], "--cpus-per-worker", "each worker needs 32 CPU on one node"),
    ],
)  # fmt: skip
def test_ray_train_workers_that_never_fit_are_refused(
    flags: list[str], key: str, text: str, tmp_path: Path, tiny_config
) -> None:
    config = tiny_config("never_fits", data__batch_size=64)
    out = tmp_path / "never_fits"
    proc = run_cli(
        "train", str(config), "--out", str(out), "--storage", str(tmp_path / "storage"), *flags,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    line = _one_error_line(proc)
    assert f"error: {key}: {text}" in line and "local Ray cluster" in line, line
    assert not out.exists() and not (tmp_path / "storage").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_a_joined_cluster_without_an_autoscaler_refuses_at_once(tmp_path: Path) -> None:
    """`--address` to a cluster started by hand (two nodes; its autoscaler is read-only): the
    check uses that cluster's nodes and, with nothing to wait for, exits 2."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
        space = _space(tmp_path, cpu=1, gpu=1)
        proc = run_cli(
            "tune", str(space), "--out", str(tmp_path / "runs" / "never_fits"), "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db", "--address", address, "-q", timeout=300,
        )  # fmt: skip
    finally:
        cluster.shutdown()
    line = _one_error_line(proc)
    assert f"the cluster at {address} has 2 CPU and 0 GPU on 2 nodes" in line, line
    assert "tune.resources.gpu" in line and not (tmp_path / "runs").exists()
