"""`raysl train --workers N`: Ray Train runs the same loop, survives failures, spans nodes.

These start real Ray clusters on this machine (2 CPUs): each test costs 30-150 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysl.checkpoint import PATTERN, load_checkpoint
from raysl.reporting import read_jsonl
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _steps(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl", "step")]


def _complete_checkpoints(directory: Path) -> list[str]:
    """Every checkpoint directory must load whole; hidden temporary ones are not checkpoints."""
    names = sorted(p.name for p in directory.iterdir() if PATTERN.match(p.name))
    for name in names:
        state = load_checkpoint(directory / name)
        assert state["epoch"] == int(name.split("_")[1])
        assert (directory / name / "meta.json").is_file()
    return names


def test_two_workers_equal_one_process_and_resume_through_a_uri(
    tiny_config, tmp_path: Path
) -> None:
    config = tiny_config(epochs=2, eval__test=False)
    single = run_cli("train", str(config), "--out", str(tmp_path / "single"), "-q")
    assert single.returncode == 0, single.stderr
    store = tmp_path / "store"
    uri = f"file://{store}"
    out = tmp_path / "local" / "ray"
    ray_run = run_cli(
        "train", str(config), "--out", str(out), "--workers", "2", "--storage", uri, "-q"
    )
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    assert "x 2 workers" in ray_run.stdout and ray_run.stderr.strip() == "", (
        ray_run.stderr
    )  # Ray's chatter stays in logs
    one, two = _steps(tmp_path / "single"), _steps(out)
    assert len(one) == len(two) >= 6
    assert two == pytest.approx(one, rel=1e-5, abs=1e-5)  # same global batch, same steps
    assert _complete_checkpoints(store / "ray" / "checkpoints") == ["epoch_0001", "epoch_0002"]
    workers = json.loads((out / "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1]

    again = run_cli("train", str(config), "--out", str(out), "--workers", "2", "--storage", uri)
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = run_cli(
        "train",
        str(config),
        "--out",
        str(out),
        "--workers",
        "2",
        "--storage",
        uri,
        "--set",
        "epochs=3",
        "--resume",
        "-q",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 2" in resumed.stdout
    assert _complete_checkpoints(store / "ray" / "checkpoints") == [
        "epoch_0002",
        "epoch_0003",
    ]  # checkpoint.keep = 2


def test_killed_worker_restarts_from_the_last_checkpoint(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(epochs=5, data__synthetic__num_samples=1536, log_every=5)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raysl",
            "train",
            str(config),
            "--out",
            str(out),
            "--workers",
            "2",
            "--max-failures",
            "1",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    # the epoch row is written after its checkpoint's upload is reported back: wait for both
    def first_epoch_logged() -> bool:
        metrics = out / "metrics.jsonl"
        return (out / "checkpoints" / "epoch_0001").exists() and bool(
            metrics.exists() and read_jsonl(metrics, "epoch")
        )

    deadline = time.time() + 300
    while time.time() < deadline and not first_epoch_logged():
        time.sleep(0.1)
    assert first_epoch_logged(), "no first checkpoint and epoch row"
    done_before = max(r["epoch"] for r in read_jsonl(out / "metrics.jsonl", "epoch"))
    victim = next(w for w in json.loads((out / "workers.json").read_text()) if w["rank"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)  # one training worker, by pid
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]

    starts = read_jsonl(out / "metrics.jsonl", "start")
    assert len(starts) == 2, "the worker group restarted once"
    assert starts[1]["start_epoch"] >= done_before  # at most the epoch in progress was lost
    epochs = [r["epoch"] for r in read_jsonl(out / "metrics.jsonl", "epoch")]
    assert epochs[-1] == 5 and sorted(set(epochs)) == [1, 2, 3, 4, 5]
    assert _complete_checkpoints(out / "checkpoints")[-1] == "epoch_0005"
    assert "resuming after epoch" in stdout


def test_workers_spread_over_two_real_nodes(tiny_config, tmp_path: Path) -> None:
    """A head node and a second node started on this machine; SPREAD puts a worker on each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        config = tiny_config(epochs=1, eval__test=False)
        out = tmp_path / "spread"
        proc = run_cli(
            "train", str(config), "--out", str(out), "--workers", "2", "--placement", "SPREAD",
            "--address", cluster.address, "-q",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        nodes = {w["node_id"] for w in json.loads((out / "workers.json").read_text())}
        assert len(nodes) == 2, nodes  # node ids, not node ranks: both nodes share this IP
        assert nodes <= {node.node_id for node in cluster.list_all_nodes()}
    finally:
        cluster.shutdown()


def test_bad_scale_is_refused_before_ray_starts(tiny_config, tmp_path: Path) -> None:
    config = tiny_config()  # global batch 64
    started = time.time()
    proc = run_cli("train", str(config), "--out", str(tmp_path / "x"), "--workers", "3")
    assert proc.returncode == 2 and "data.batch_size" in proc.stderr and "divisible" in proc.stderr
    assert not (tmp_path / "x").exists() and time.time() - started < 20
