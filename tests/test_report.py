"""`leaderboard`, `raysl report` and `raysl ui` on a real SQLite store built by StudyTracker."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysl.errors import ConfigError
from raysl.tracking import leaderboard, resolve_tracking_uri, write_leaderboard
from tests.conftest import REPO, free_port, run_cli

# trial -> (status, [val/knn_top1 per epoch], train/loss, optim.lr)
TRIALS = {
    "a": ("completed", [10.0, 20.0, 30.0], 1.0, 0.1),
    "b": ("stopped", [35.0], 2.0, 0.2),  # above "a", but ASHA stopped it after one epoch
    "c": ("failed", [50.0, 90.0], 0.5, 0.3),
    "d": ("completed", [15.0, 30.0, 40.0], 1.5, 0.4),
    "e": ("failed", [], None, 0.5),
}


def build_store() -> None:
    """Two studies of experiment `demo` (the newer one has TRIALS) and an experiment `other`."""
    import time

    from raysl.tracking import StudyTracker

    uri = resolve_tracking_uri(None)
    old = StudyTracker(uri, "demo", "old-study")
    old.trial_started("o0", "trial_o0", {"optim.lr": 9.0}, ["optim.lr"])
    old.trial_result("o0", {"val/knn_top1": 99.0}, step=1)
    old.trial_ended("o0", "completed")
    old.study_ended(None, "completed")
    StudyTracker(uri, "other", "s").study_ended(None, "completed")
    time.sleep(0.05)  # the newest study is the one started last
    new = StudyTracker(uri, "demo", "new-study")
    for trial_id, (status, knn, loss, lr) in TRIALS.items():
        config = {"optim.lr": lr, "optim.name": "sgd", "loss.infonce.temperature": 0.2}
        new.trial_started(trial_id, f"trial_{trial_id}", config, ["optim.lr"])
        for epoch, value in enumerate(knn, start=1):
            new.trial_result(trial_id, {"val/knn_top1": value, "train/loss": loss}, step=epoch)
        new.trial_ended(trial_id, status, reason="RuntimeError: x" if status == "failed" else "")
    new.study_ended(None, "completed")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(directory, tracking URI) of a default store, built in a fresh process that stays silent."""
    root = tmp_path_factory.mktemp("report_store")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_report import build_store; build_store()"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    # Creating the store runs database migrations; none of that chatter reaches the terminal.
    assert proc.stdout == "" and proc.stderr == ""
    return root, f"sqlite:///{root.resolve()}/mlflow.db"


def test_leaderboard_ranks_the_newest_study(store: tuple[Path, str]) -> None:
    _, uri = store
    rows = leaderboard(uri, "demo", top=10, metric="val/knn_top1", mode="max")
    # Full-budget trials first (as the study's leaderboard), then stopped, then failed; best
    # last value first within each; no metric last.
    assert [r["trial_id"] for r in rows] == ["d", "a", "b", "c", "e"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["val/knn_top1"] for r in rows] == [40.0, 30.0, 35.0, 90.0, None]
    assert [r["status"] for r in rows] == ["completed", "completed", "stopped", "failed", "failed"]
    assert [r["epochs"] for r in rows] == [3, 3, 1, 2, None]
    assert rows[0]["optim.lr"] == 0.4 and isinstance(rows[0]["optim.lr"], float)
    assert "optim.name" not in rows[0]  # searched params only
    assert list(rows[0])[:8] == [
        *("rank", "number", "trial_id", "status", "epochs"),
        *("val/knn_top1", "best", "best_epoch"),
    ]
    assert all(list(r) == list(rows[0]) for r in rows)
    assert rows[0]["trial_name"] == "trial_d" and len(rows[0]["run_id"]) == 32

    by_loss = leaderboard(uri, "demo", top=2, metric="train/loss", mode="min")
    assert [r["trial_id"] for r in by_loss] == ["a", "d"]


def test_leaderboard_errors(store: tuple[Path, str], tmp_path: Path) -> None:
    _, uri = store
    with pytest.raises(ConfigError, match=r"no experiment 'nope'.*experiments there: demo, other"):
        leaderboard(uri, "nope", 10, "val/knn_top1", "max")
    with pytest.raises(ConfigError, match="logged metrics: train/loss, val/knn_top1"):
        leaderboard(uri, "demo", 10, "val/knn_top5", "max")
    missing = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ConfigError, match="no MLflow store"):
        leaderboard(missing, "demo", 10, "val/knn_top1", "max")
    assert not (tmp_path / "mlflow.db").exists()  # a reader never creates a store


def test_write_leaderboard(store: tuple[Path, str], tmp_path: Path) -> None:
    rows = leaderboard(store[1], "demo", 10, "val/knn_top1", "max")
    parquet, csv_path = write_leaderboard(rows, tmp_path / "out", "demo")
    assert parquet == tmp_path / "out" / "demo_leaderboard.parquet"
    table = pq.read_table(parquet)
    assert table.column_names == list(rows[0])
    assert table.column("trial_id").to_pylist() == ["d", "a", "b", "c", "e"]
    assert table.column("val/knn_top1").to_pylist() == [40.0, 30.0, 35.0, 90.0, None]
    with open(csv_path, newline="") as f:
        records = list(csv.DictReader(f))
    assert [r["trial_id"] for r in records] == ["d", "a", "b", "c", "e"]
    assert records[-1]["val/knn_top1"] == "" and records[0]["optim.lr"] == "0.4"


# ---- the command line -------------------------------------------------------------------------
def test_cli_report(store: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = store
    out = tmp_path / "board"
    proc = run_cli("report", "demo", "--top", "3", "--out", str(out), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "new-study" in proc.stdout and "top 3 of 5 trials by val/knn_top1" in proc.stdout
    lines = proc.stdout.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("───")) + 1 :]
    assert [line.split()[1] for line in body[:3]] == ["d", "a", "b"]  # no Optuna numbers here
    assert [line.split()[2] for line in body[:3]] == ["completed", "completed", "stopped@1"]
    assert "val/" in proc.stdout and "last" in proc.stdout and "best" in proc.stdout
    assert proc.stderr == ""
    assert pq.read_table(out / "demo_leaderboard.parquet").num_rows == 5  # every trial, ranked
    assert (out / "demo_leaderboard.csv").is_file()


def test_cli_report_errors(store: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = store
    proc = run_cli("report", "nope", "--out", str(tmp_path / "x"), cwd=root)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: NAME: no experiment 'nope' in sqlite:///{root.resolve()}/mlflow.db; "
        "experiments there: demo, other"
    ]
    proc = run_cli("report", "demo", cwd=tmp_path)  # no store here
    assert proc.returncode == 2 and "no MLflow store at" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.slow
def test_cli_ui_serves_the_store_on_loopback(store: tuple[Path, str]) -> None:
    root, _ = store
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysl", "ui", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # blocks until the server answers (or raysl exits)
        assert first.startswith(f"MLflow UI: http://127.0.0.1:{port}"), first + proc.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
        assert _listening(port) == {"0100007F"}  # bound to 127.0.0.1 only, by default
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        assert "stopping the MLflow UI" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the server and its workers are gone


def test_cli_ui_refuses_a_missing_store(tmp_path: Path) -> None:
    proc = run_cli("ui", "--port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --tracking-uri: no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()
    proc = run_cli("ui", "--tracking-uri", "http://127.0.0.1:5999", cwd=tmp_path)
    assert proc.returncode == 0 and "serves the UI itself" in proc.stdout


def test_cli_ui_refuses_a_busy_port(store: tuple[Path, str]) -> None:
    root, _ = store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = run_cli("ui", "--port", str(busy.getsockname()[1]), cwd=root)
    assert proc.returncode == 2 and "is in use" in proc.stderr
