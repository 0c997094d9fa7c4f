"""`raysl tune`: real Ray (local, 2 CPUs), real Optuna, real MLflow (SQLite and a server).

Everything is asserted through MLflow's client, as a user comparing trials would see it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, free_port, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ray]

EPOCHS = 3


def study_file(
    tmp_path: Path,
    name: str = "tiny_study",
    num_samples: int = 6,
    scheduler: object = None,
    resources: dict | None = None,
    max_concurrent: int = 2,
) -> Path:
    from raysl.yamlio import unflatten

    config = unflatten(
        {
            **TINY,
            "epochs": EPOCHS,
            "loss.infonce.weight": 1.0,
            "loss.supcon.weight": 0.0,
            "eval.test": False,
        }
    )
    doc = {
        "name": name,
        "config": config,
        "search": {
            "optim.lr": {"loguniform": [0.001, 1.0]},
            "loss.infonce.temperature": {"loguniform": [0.05, 0.5]},
            "loss.supcon.weight": {"choice": [0.0, 0.5]},
            "loss.supcon.temperature": {
                "loguniform": [0.05, 0.5],
                "when": "loss.supcon.weight > 0",
            },
        },
        "tune": {
            "metric": "val/knn_top1",
            "mode": "max",
            "num_samples": num_samples,
            "max_concurrent": max_concurrent,
            "resources": resources or {"cpu": 1},
            "scheduler": scheduler
            if scheduler is not None
            else {"asha": {"grace_period": 1, "reduction_factor": 2}},
            "seed": 0,
            "startup_trials": 2,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _runs(uri: str, name: str) -> tuple[object, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("raysl.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("raysl.kind") == "trial"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], children


def run_and_read(tmp: Path, space: Path, name: str) -> dict:
    """`raysl tune` the study file `space` in `tmp` (SQLite), then `raysl report` it; what the
    study left: its stdout, the report's, the MLflow parent and trials, the Optuna study and
    the leaderboard."""
    from raysl.launch.optuna_search import load_optuna_study

    uri = f"sqlite:///{tmp}/mlflow.db"
    out = tmp / "runs" / name
    proc = run_cli("tune", str(space), "--out", str(out), "--tracking-uri", uri, "-q", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_cli("report", name, "--tracking-uri", uri, "--out", str(tmp / "r"), cwd=tmp)
    assert report.returncode == 0, report.stderr[-3000:]
    parent, trials = _runs(uri, name)
    state = json.loads((out / "study.json").read_text())
    return {
        "uri": uri, "tmp": tmp, "out": out, "stdout": proc.stdout, "report": report.stdout,
        "parent": parent, "trials": trials,
        "optuna": load_optuna_study(out, state["optuna_study"]),
        "board": json.loads((out / "leaderboard.json").read_text()),
    }  # fmt: skip


def test_study_with_sqlite_tracking(tmp_path: Path) -> None:
    space = study_file(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli(
        "tune",
        str(space),
        "--out",
        str(tmp_path / "runs" / "tiny_study"),
        "--tracking-uri",
        uri,
        "-q",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaderboard" in proc.stdout and proc.stderr.strip() == "", (
        proc.stderr
    )  # Ray's/Tune's chatter stays in logs

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent, children = _runs(uri, "tiny_study")
    assert parent.info.status == "FINISHED" and len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {
        parent.info.run_id
    }  # nested under the study
    assert len({c.data.tags["raysl.trial_id"] for c in children}) == 6
    for child in children:
        params = child.data.params
        assert {"optim.lr", "loss.infonce.temperature", "data.batch_size", "model.width"} <= set(
            params
        )  # flat dotted config
        history = client.get_metric_history(child.info.run_id, "val/knn_top1")
        epochs = sorted(m.step for m in history)
        searched = child.data.tags["raysl.searched"]
        # the conditional parameter is searched exactly when its condition holds
        assert ("loss.supcon.temperature" in searched) == (float(params["loss.supcon.weight"]) > 0)
        if child.data.tags["raysl.status"] == "completed":
            assert child.info.status == "FINISHED" and epochs == [1, 2, 3]
            assert client.get_metric_history(child.info.run_id, "train/loss/infonce")
        else:
            assert child.data.tags["raysl.status"] == "stopped" and child.info.status == "FINISHED"
            stopped_at = int(child.data.tags["raysl.stopped_at_epoch"])
            assert epochs == list(range(1, stopped_at + 1)) and stopped_at < EPOCHS
    statuses = [c.data.tags["raysl.status"] for c in children]
    assert "stopped" in statuses and "completed" in statuses  # ASHA stopped some trials early
    stopped = [c for c in children if c.data.tags["raysl.status"] == "stopped"]
    completed = [c for c in children if c.data.tags["raysl.status"] == "completed"]
    rung = min(int(c.data.tags["raysl.stopped_at_epoch"]) for c in stopped)

    def at_rung(run: object) -> float:
        history = client.get_metric_history(run.info.run_id, "val/knn_top1")
        return next(m.value for m in history if m.step == rung)

    assert min(at_rung(c) for c in stopped) <= max(
        at_rung(c) for c in completed
    )  # the poor ones were stopped
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "plots"} <= artifacts
    assert parent.data.tags["raysl.best_trial_id"] in {
        c.data.tags["raysl.trial_id"] for c in completed
    }


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 - open for the fixture's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(
            "the MLflow server did not start: "
            + (tmp_path / "mlflow-server.log").read_text()[-2000:]
        )
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # only the server this test started
    proc.wait(timeout=30)
    log.close()


def test_study_with_a_real_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    space = study_file(tmp_path, name="server_study", num_samples=2, scheduler="none")
    proc = run_cli(
        "tune",
        str(space),
        "--out",
        str(tmp_path / "runs" / "server_study"),
        "--tracking-uri",
        mlflow_server,
        "-q",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = _runs(mlflow_server, "server_study")
    assert len(children) == 2 and all(
        c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children
    )
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.data.tags["raysl.trial_id"], c.info.status) for c in children
    ]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    assert "best_config.yaml" in {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }  # proxied artifacts
    assert socket.gethostbyname("localhost") == "127.0.0.1"


def test_trials_with_two_workers_run_ray_train(tmp_path: Path) -> None:
    """workers: 2 -> each trial drives a TorchTrainer of 2 workers (1 CPU each: every CPU of
    this machine, so the trial itself must not hold one) and its epochs reach MLflow."""
    space = study_file(
        tmp_path,
        name="ddp_study",
        num_samples=2,
        scheduler="none",
        resources={"cpu": 1, "workers": 2},
        max_concurrent=1,
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "storage"
    proc = run_cli(
        "tune", str(space), "--out", str(tmp_path / "runs" / "ddp_study"),
        "--storage", str(storage), "--tracking-uri", uri, "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent, children = _runs(uri, "ddp_study")
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val/knn_top1")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        trial_id = child.data.tags["raysl.trial_id"]
        train_run = storage / f"ddp_study-train-{trial_id}"
        assert train_run.is_dir(), sorted(p.name for p in storage.iterdir())  # a Ray Train run


def test_killed_driver_resumes_without_duplicates(tmp_path: Path) -> None:
    space = study_file(tmp_path, name="resumed_study", num_samples=6, scheduler="none")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "runs" / "resumed_study"
    args = [
        sys.executable,
        "-m",
        "raysl",
        "tune",
        str(space),
        "--out",
        str(out),
        "--tracking-uri",
        uri,
        "-q",
    ]
    driver = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    from mlflow.tracking import MlflowClient

    deadline = time.time() + 300
    finished = 0
    while time.time() < deadline and finished < 2:
        time.sleep(1)
        try:
            experiment = MlflowClient(uri).get_experiment_by_name("resumed_study")
            if experiment:
                runs = MlflowClient(uri).search_runs(
                    [experiment.experiment_id], "tags.`raysl.kind` = 'trial'"
                )
                finished = sum(r.info.status == "FINISHED" for r in runs)
        except Exception:  # the store is being created
            continue
    assert finished >= 2, "no trial finished before the deadline"
    os.kill(driver.pid, signal.SIGKILL)  # the driver, by pid, mid-study
    driver.wait()
    time.sleep(3)  # let Ray's reaper take the local cluster down

    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stdout
    parent, children = _runs(uri, "resumed_study")
    trial_ids = [c.data.tags["raysl.trial_id"] for c in children]
    assert (
        len(trial_ids) == len(set(trial_ids)) == 6
    )  # exactly the trials asked for, none logged twice
    assert parent.info.status == "FINISHED"
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.data.tags["raysl.trial_id"], c.info.status) for c in children
    ]
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board) == 6  # the leaderboard covers the trials finished before the kill


def test_bad_space_is_refused_before_ray_starts(tmp_path: Path) -> None:
    space = study_file(tmp_path)
    text = space.read_text().replace("metric: val/knn_top1", "metric: test/knn_top1")
    space.write_text(text)
    started = time.time()
    proc = run_cli("tune", str(space), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "test" in proc.stderr and "tune.metric" in proc.stderr
    assert not (tmp_path / "x").exists() and time.time() - started < 30
