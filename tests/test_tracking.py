"""StudyTracker against real MLflow: a SQLite store and a real `mlflow server` (proxied artifacts)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from raysl.errors import ConfigError
from raysl.tracking import (
    StudyTracker,
    code_version,
    leaderboard,
    newest_study,
    rank_trials,
    resolve_tracking_uri,
)
from raysl.yamlio import flatten, unflatten
from tests.conftest import free_port

CONFIG = {
    "seed": 0,
    "epochs": 3,
    "optim": {"name": "sgd", "lr": 0.3},
    "loss": {"infonce": {"weight": 1.0, "temperature": 0.2}},
    "augment": {"preset": "simclr", "views": 2},
    "eval": {"linear_probe": False},
}
SEARCHED = ("optim.lr", "loss.infonce.temperature")


# ---- stores --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sqlite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqlite_store")


@pytest.fixture(scope="module")
def sqlite_uri(sqlite_dir: Path) -> str:
    """The embedded default: `sqlite:///<cwd>/mlflow.db`, resolved in the store's directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sqlite_dir)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = resolve_tracking_uri(None)
    assert uri == f"sqlite:///{sqlite_dir.resolve()}/mlflow.db"
    return uri


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts); stopped by its pid."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    artifacts = root / "artifacts"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = (
        f"--backend-store-uri sqlite:///{root}/server.db --artifacts-destination {artifacts} "
        f"--host 127.0.0.1 --port {port} --workers 1"
    ).split()
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            env=env,
            start_new_session=True,  # its uvicorn child shares the group we stop below
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{uri}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)
        yield uri, artifacts
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, tracking URI) for each kind of store."""
    if request.param == "sqlite":
        return "sqlite", request.getfixturevalue("sqlite_uri")
    return "server", request.getfixturevalue("server")[0]


def _optuna_study(completed: int, pruned: int = 0) -> optuna.Study:
    """`completed` trials of 3 epochs, then `pruned` ones stopped after 1 (values per epoch)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(completed + pruned):
        trial = study.ask()
        value = trial.suggest_float("optim.lr", 1e-3, 1.0, log=True) + trial.suggest_float(
            "loss.infonce.temperature", 0.05, 1.0
        )
        epochs = 3 if i < completed else 1
        for epoch in range(1, epochs + 1):
            trial.report(value * epoch, epoch)
        if i < completed:
            study.tell(trial, value * epochs)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    return client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000
    )


# ---- the tracking URI -------------------------------------------------------------------------
def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000/")
    assert resolve_tracking_uri(None) == "http://mlflow.internal:5000"
    assert resolve_tracking_uri("http://127.0.0.1:5001") == "http://127.0.0.1:5001"  # CLI wins
    rel = resolve_tracking_uri("sqlite:///runs/x.db")
    assert rel == f"sqlite:///{tmp_path.resolve()}/runs/x.db"
    assert (
        resolve_tracking_uri("store/mlflow.db") == f"sqlite:///{tmp_path.resolve()}/store/mlflow.db"
    )
    assert resolve_tracking_uri("postgresql://u@db/mlflow") == "postgresql://u@db/mlflow"
    for bad in ("some/dir", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="--tracking-uri"):
            resolve_tracking_uri(bad)


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="cannot reach the MLflow server"):
        StudyTracker(f"http://127.0.0.1:{free_port()}", "x", "study")


def test_code_version_names_the_commit() -> None:
    version, commit = code_version()
    assert version.startswith("0.") or version == "unknown"
    if (Path(__file__).parents[1] / ".git").exists():
        assert commit is not None and len(commit) == 40 and f"+g{commit[:12]}" in version


# ---- a whole study ------------------------------------------------------------------------
def test_study_layout(
    store: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kind, uri = store
    experiment = f"layout_{kind}"
    tracker = StudyTracker(
        uri,
        experiment,
        "study-1",
        description="a test study",
        tags={"raysl.method": "simclr"},
        metric="val/knn_top1",
    )
    tracker.log_study_params(
        {"search": {"optim.lr": "loguniform(0.001, 1)"}, "tune.num_samples": 4}
    )
    configs = {}
    for i, trial_id in enumerate(["t0", "t1", "t2", "t3"]):
        config = {
            **flatten(CONFIG),
            "optim.lr": 0.1 * (i + 1),
            "loss.infonce.temperature": 0.1 + i / 10,
        }
        configs[trial_id] = config
        tracker.trial_started(
            trial_id, f"trial_{trial_id}", config, {k: config[k] for k in SEARCHED}, number=i
        )
    for epoch in (1, 2, 3):
        for i, trial_id in enumerate(["t0", "t3"]):
            tracker.trial_result(
                trial_id,
                {
                    "train/loss": 5.0 / epoch,
                    "train/loss/infonce": 5.0 / epoch,
                    "val/knn_top1": 10.0 * epoch + i,
                    "lr": 0.1,
                    "train/throughput": 1000.0,
                    "note": "not a number",  # ignored
                },
                step=epoch,
            )
    tracker.trial_result("t1", {"train/loss": 6.0, "val/knn_top1": 3.0}, step=1)
    tracker.trial_result("t2", {"train/loss": 7.0}, step=1)
    tracker.trial_ended("t0", "completed", summary={"test/knn_top1": 31.0})
    tracker.trial_ended("t1", "stopped", reason="asha: below the rung median", stopped_at_epoch=1)
    tracker.trial_ended(
        "t2", "failed", reason="Traceback (most recent call last):\n  ...\nValueError: boom\n"
    )
    tracker.trial_ended("t3", "completed", summary={"test/knn_top1": 32.0})

    checkpoint = tmp_path / "epoch_0003"
    (checkpoint / "extra").mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"\x00weights" * 100)
    (checkpoint / "extra" / "meta.json").write_text('{"epoch": 3}')
    best = {
        "trial_id": "t3",
        "metrics": {"val/knn_top1": 31.0, "train/loss": 5 / 3},
        "config": configs["t3"],
    }
    board = {"#": [1, 2], "trial": ["#3", "#0"], "val/knn_top1 last": [31.0, 30.0]}
    tracker.study_ended(
        best,
        "completed",
        best_checkpoint=checkpoint,
        optuna_study=_optuna_study(2, pruned=2),
        leaderboard=board,
        summary="4 trials: 2 completed, 1 stopped, 1 failed; best #3 31.0 %",
    )

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.run_name == "study-1" and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["raysl.kind"] == "study" and tags["raysl.status"] == "completed"
    assert tags["raysl.best_trial_id"] == "t3" and tags["raysl.method"] == "simclr"
    assert tags["mlflow.note.content"] == (
        "**Summary:** 4 trials: 2 completed, 1 stopped, 1 failed; best #3 31.0 %\n\na test study"
    )
    assert tags["raysl.summary"].startswith("4 trials: 2 completed")
    assert exp.tags["mlflow.note.content"] == "a test study"
    assert tags["raysl.code_version"] == code_version()[0]
    assert parent.data.params == {
        "search.optim.lr": "loguniform(0.001, 1)",
        "tune.num_samples": "4",
    }
    assert not any(k.startswith("best/") for k in parent.data.metrics)  # best_trial.json instead

    children = {
        r.data.tags["raysl.trial_id"]: r
        for r in _children(client, exp.experiment_id, parent.info.run_id)
    }
    assert sorted(children) == ["t0", "t1", "t2", "t3"]
    assert tags["raysl.best_run_id"] == children["t3"].info.run_id
    assert children["t3"].data.tags["raysl.best"] == "true"
    names = {t: r.info.run_name for t, r in children.items()}
    assert names == {
        "t0": "#0 completed val 30.0",
        "t1": "#1 stopped@1 val 3.0",
        "t2": "#2 failed",
        "t3": "#3 completed val 31.0",
    }
    for trial_id, run in children.items():
        assert run.data.tags["raysl.optuna_trial"] == trial_id[1:]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["raysl.searched"] == ",".join(sorted(SEARCHED))
        assert run.data.tags["raysl.code_version"] == code_version()[0]
        assert run.data.tags["raysl.method"] == "simclr"
        assert run.data.params["optim.lr"] == str(configs[trial_id]["optim.lr"])
        assert run.data.params["loss.infonce.temperature"] == str(
            configs[trial_id]["loss.infonce.temperature"]
        )
        assert run.data.params["eval.linear_probe"] == "false"
        assert set(run.data.params) == set(configs[trial_id])  # the full dotted config, once

    statuses = {t: (r.info.status, r.data.tags["raysl.status"]) for t, r in children.items()}
    assert statuses == {
        "t0": ("FINISHED", "completed"),
        "t1": ("FINISHED", "stopped"),  # ASHA-stopped: not a failure
        "t2": ("FAILED", "failed"),
        "t3": ("FINISHED", "completed"),
    }
    assert children["t1"].data.tags["raysl.stopped_at_epoch"] == "1"
    assert children["t1"].data.tags["raysl.reason"] == "asha: below the rung median"
    assert children["t2"].data.tags["raysl.reason"] == "ValueError: boom"
    t3_tags = children["t3"].data.tags
    assert (t3_tags["raysl.best_value"], t3_tags["raysl.best_epoch"]) == ("31.0", "3")
    note = children["t1"].data.tags["mlflow.note.content"]
    assert "Trial #1" in note and "optim.lr=0.2" in note and "stopped" in note
    assert "asha: below the rung median" in note and "unweighted" in note

    t0 = children["t0"].info.run_id
    history = client.get_metric_history(t0, "val/knn_top1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 10.0),
        (2, 20.0),
        (3, 30.0),
    ]
    assert [m.step for m in client.get_metric_history(t0, "train/loss/infonce")] == [1, 2, 3]
    assert "epoch" not in children["t0"].data.metrics  # the step already; a tag instead
    assert children["t0"].data.tags["raysl.epochs"] == "3"
    assert children["t0"].data.metrics["test/knn_top1"] == 31.0
    assert "note" not in children["t0"].data.metrics

    pid = parent.info.run_id
    top = {a.path for a in client.list_artifacts(pid)}
    assert top == {
        "best_config.yaml",
        "best_checkpoint",
        "plots",
        "best_trial.json",
        "leaderboard.json",
    }
    plots = {a.path for a in client.list_artifacts(pid, "plots")}
    names = ("optimization_history", "intermediate_values", "param_importances")
    assert plots == {f"plots/{n}.png" for n in (*names, "parallel_coordinate")}
    down = Path(client.download_artifacts(pid, "", str(tmp_path / "down")))
    run_file = yaml.safe_load((down / "best_config.yaml").read_text())
    assert run_file["name"] == f"{experiment}_best"
    assert run_file["config"] == unflatten(configs["t3"])
    assert (down / "best_checkpoint" / "state.pt").read_bytes() == (
        checkpoint / "state.pt"
    ).read_bytes()
    assert (down / "best_checkpoint" / "extra" / "meta.json").read_text() == '{"epoch": 3}'
    assert (down / "plots" / "param_importances.png").read_bytes()[:4] == b"\x89PNG"
    assert all((down / "plots" / f"{n}.png").stat().st_size < 300_000 for n in names)
    best_trial = json.loads((down / "best_trial.json").read_text())
    assert best_trial["metrics"]["val/knn_top1"] == 31.0 and best_trial["optuna_trial"] == 3
    assert best_trial["run_id"] == children["t3"].info.run_id
    table = json.loads((down / "leaderboard.json").read_text())
    assert table["columns"] == list(board) and table["data"][0] == [1, "#3", 31.0]

    rows = leaderboard(uri, experiment, top=3, metric="val/knn_top1", mode="max")
    assert [(r["trial_id"], r["val/knn_top1"]) for r in rows] == [
        ("t3", 31.0),
        ("t0", 30.0),
        ("t1", 3.0),
    ]

    # Where the files are: next to the SQLite file, or in the server's artifacts destination.
    if kind == "sqlite":
        assert parent.info.artifact_uri.startswith("file://")
        root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment
    else:
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        root = request.getfixturevalue("server")[1]
    assert list(root.rglob("best_config.yaml")) and list(root.rglob("parallel_coordinate.png"))


def test_trials_and_parents_are_never_duplicated(store: tuple[str, str]) -> None:
    kind, uri = store
    experiment = f"resume_{kind}"
    first = StudyTracker(uri, experiment, "study-r")
    run_id = first.trial_started("t0", "trial_t0", flatten(CONFIG), SEARCHED)
    assert first.trial_started("t0", "trial_t0", flatten(CONFIG), SEARCHED) == run_id
    first.trial_result("t0", {"val/knn_top1": 1.0}, step=1)
    first.study_ended(None, "interrupted")  # the driver died; t0 was still running

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(run_id).data.tags["raysl.status"] == "interrupted"
    assert client.get_run(first.parent_run_id).info.status == "KILLED"

    # The resumed study continues the same parent and the same child runs.
    again = StudyTracker(uri, experiment, "study-r", parent_run_id=first.parent_run_id)
    assert again.parent_run_id == first.parent_run_id
    assert client.get_run(first.parent_run_id).info.status == "RUNNING"
    assert again.existing_trials() == {"t0": run_id}
    changed = {**flatten(CONFIG), "optim.lr": 99.0}  # params are immutable: kept, not raised
    assert again.trial_started("t0", "trial_t0", changed, SEARCHED) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    assert "raysl.reason" not in client.get_run(run_id).data.tags  # from the interruption
    assert client.get_run(run_id).data.params["optim.lr"] == "0.3"
    again.trial_result("t0", {"val/knn_top1": 2.0}, step=2)
    again.trial_started("t1", "trial_t1", flatten(CONFIG), SEARCHED)
    again.log_study_params({"tune.num_samples": 2})
    again.log_study_params({"tune.num_samples": 2})
    again.trial_ended("t0", "completed")
    again.study_ended(None, "completed")

    studies = client.search_runs([exp_id], "tags.`raysl.kind` = 'study'")
    assert [r.info.run_id for r in studies] == [first.parent_run_id]
    children = _children(client, exp_id, first.parent_run_id)
    assert sorted(r.data.tags["raysl.trial_id"] for r in children) == ["t0", "t1"]
    steps = [m.step for m in client.get_metric_history(run_id, "val/knn_top1")]
    assert sorted(steps) == [1, 2]
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"


def test_bad_parent_and_unknown_trial(sqlite_uri: str) -> None:
    with pytest.raises(ConfigError, match="no MLflow run"):
        StudyTracker(sqlite_uri, "errors", "s", parent_run_id="0" * 32)
    other = StudyTracker(sqlite_uri, "errors_other", "s")
    with pytest.raises(ConfigError, match="not an active run of experiment 'errors'"):
        StudyTracker(sqlite_uri, "errors", "s", parent_run_id=other.parent_run_id)
    with pytest.raises(KeyError, match="trial_started"):
        other.trial_result("nope", {"x": 1.0}, step=1)
    with pytest.raises(ValueError, match="status"):
        other.trial_ended("nope", "paused")  # type: ignore[arg-type]


def test_plots_skipped_with_too_few_trials(
    sqlite_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = StudyTracker(sqlite_uri, "few", "study-f")
    tracker.trial_started("t0", "trial_t0", flatten(CONFIG), SEARCHED)
    tracker.trial_ended("t0", "completed")
    with caplog.at_level(logging.INFO, logger="raysl.tracking"):
        tracker.study_ended(
            {"trial_id": "t0", "metrics": {}}, "completed", optuna_study=_optuna_study(1)
        )
    assert "Optuna plots skipped: 1 trial(s) reported a value" in caplog.text
    client = MlflowClient(sqlite_uri)
    assert {a.path for a in client.list_artifacts(tracker.parent_run_id)} == {
        "best_config.yaml",
        "best_trial.json",
    }
    # Without a config, best_config.yaml is rebuilt from the best trial's params, typed.
    path = client.download_artifacts(tracker.parent_run_id, "best_config.yaml")
    assert yaml.safe_load(Path(path).read_text())["config"] == CONFIG


def test_trials_tune_lost_are_set_apart_after_a_completed_study(sqlite_uri: str) -> None:
    """A trial started just before a driver died, and missing from Tune's snapshot, is still
    RUNNING when the resumed study completes: it ends KILLED, out of the study's trials."""
    tracker = StudyTracker(sqlite_uri, "lost", "study-l")
    for trial_id in ("t0", "t1"):
        tracker.trial_started(trial_id, f"trial_{trial_id}", flatten(CONFIG), SEARCHED)
        tracker.trial_result(trial_id, {"val/knn_top1": 10.0}, step=1)
    tracker.trial_ended("t0", "completed")
    tracker.study_ended({"trial_id": "t0", "metrics": {}}, "completed")
    client = MlflowClient(sqlite_uri)
    exp_id = client.get_experiment_by_name("lost").experiment_id
    runs = {
        r.data.tags["raysl.trial_id"]: r for r in _children(client, exp_id, tracker.parent_run_id)
    }
    assert runs["t1"].info.status == "KILLED" and runs["t1"].data.tags["raysl.kind"] == "lost_trial"
    assert (
        runs["t1"].data.tags["raysl.status"] == "lost"
        and "snapshot" in runs["t1"].data.tags["raysl.reason"]
    )
    assert runs["t0"].info.status == "FINISHED" and runs["t0"].data.tags["raysl.kind"] == "trial"
    assert [r["trial_id"] for r in rank_trials(newest_study(sqlite_uri, "lost"))] == ["t0"]


def test_trials_from_several_threads(sqlite_uri: str) -> None:
    """Tune callbacks may call the tracker from several threads at once."""
    tracker = StudyTracker(sqlite_uri, "threads", "study-t")

    def trial(trial_id: str) -> None:
        tracker.trial_started(trial_id, f"trial_{trial_id}", flatten(CONFIG), SEARCHED)
        for epoch in (1, 2, 3):
            tracker.trial_result(trial_id, {"train/loss": 1.0 / epoch}, step=epoch)
        tracker.trial_ended(trial_id, "completed")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(trial, [f"t{i}" for i in range(6)]))
    client = MlflowClient(sqlite_uri)
    exp_id = client.get_experiment_by_name("threads").experiment_id
    runs = _children(client, exp_id, tracker.parent_run_id)
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "train/loss")) == 3 for r in runs)


def test_only_params_that_affect_the_run_are_logged() -> None:
    from raysl.tracking.params import relevant_params

    config = {
        "data.source": "digits",
        "data.download": False,
        "data.synthetic.num_samples": 2048,
        "loss.infonce.weight": 1.0,
        "loss.infonce.ramp_start": 0.0,
        "loss.infonce.temperature": 0.2,
        "loss.supcon.weight": 0.0,
        "loss.supcon.temperature": 0.1,
        "loss.icc.weight": 0.0,
        "loss.icc.ramp_from": 1.0,  # ramps down from 1: on
        "loss.icc.ramp_start": 0.0,
        "eval.linear_probe": False,
        "eval.probe_lr": 0.1,
        "optim.name": "sgd",
        "optim.lars_trust": 0.001,
        "model.backbone": "convnet",
        "model.width": 16,
        "model.stem": "auto",
    }
    kept = relevant_params(config, keep=["loss.supcon.weight"])
    assert kept == {
        "data.source": "digits",
        "loss.infonce.weight": 1.0,
        "loss.infonce.temperature": 0.2,
        "loss.supcon.weight": 0.0,  # searched: shown even at 0
        "loss.icc.weight": 0.0,
        "loss.icc.ramp_from": 1.0,
        "loss.icc.ramp_start": 0.0,
        "eval.linear_probe": False,
        "optim.name": "sgd",
        "model.backbone": "convnet",
        "model.width": 16,
    }


def test_study_question_from_the_header() -> None:
    from raysl.tracking.describe import study_question

    root = Path(__file__).parents[1] / "search_spaces"
    assert study_question(root / "quickstart.yaml").startswith(
        "which lr, InfoNCE temperature and crop scale work best on digits"
    )
    assert study_question(root / "quickstart.yaml").endswith("(supcon weight 0 = SimCLR alone)?")
    assert study_question(root / "bsim_cifar10.yaml") == (
        "what does BSIM add to SimCLR at equal epochs and batch?"
    )
    assert study_question(root / "missing.yaml") == ""


def test_tracking_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, raysl.tracking.tracker, raysl.tracking.ranking, raysl.tracking.plots, "
        "raysl.tracking.board, raysl.tracking.params, raysl.study_console, "
        "raysl.cli.report, raysl.cli.ui; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
