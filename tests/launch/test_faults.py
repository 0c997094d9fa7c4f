"""Real faults during a study: a trial's process killed, the MLflow server restarted, a node lost.

Every test runs `raysl tune` as a user would (a separate process), makes the fault with a
signal to a pid that the test (or the study it started) owns, and reads the outcome back
through MLflow: one run per trial, every epoch logged exactly once (a trial restarted from
scratch would log its first epochs twice), every trial FINISHED.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.launch.test_ray_tune import study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]

METRIC = "val/knn_top1"


def _space(tmp_path: Path, name: str, epochs: int, max_concurrent: int) -> Path:
    path = study_file(
        tmp_path, name=name, num_samples=2, scheduler="none", max_concurrent=max_concurrent
    )
    doc = yaml.safe_load(path.read_text())
    doc["config"]["epochs"] = epochs
    # epochs of a few seconds (not TINY's fraction of one), so a fault lands inside a trial
    doc["config"]["data"]["synthetic"]["num_samples"] = 1024
    doc["tune"]["max_failures"] = 1
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _start_study(
    tmp_path: Path,
    space: Path,
    uri: str,
    *extra: str,
    env: dict[str, str] | None = None,
    program: tuple[str, ...] = ("-m", "raysl"),
) -> subprocess.Popen:
    name = space.stem
    args = [
        sys.executable, *program, "tune", str(space), "--out", str(tmp_path / "runs" / name),
        "--storage", str(tmp_path / "storage"), "--tracking-uri", uri, "-q", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        stdout=open(tmp_path / "study.out", "w"),
        stderr=open(tmp_path / "study.err", "w"),
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=tmp_path,
        start_new_session=True,
    )


def _trials(uri: str, name: str) -> list[Any]:
    """The trial runs of experiment `name` (empty while it does not exist yet)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], "tags.`raysl.kind` = 'trial'")
    except Exception:  # the store is being created, or the server is away
        return []


def _steps(uri: str, run_id: str) -> list[tuple[int, int]]:
    """(step, timestamp ms) of every logged value of the study's metric, in step order."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, METRIC)
    return sorted((m.step, m.timestamp) for m in history)


def _wait(what: str, predicate: Callable[[], Any], timeout: float, driver: subprocess.Popen) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        assert driver.poll() is None, f"the study ended before {what}: {_output(driver)}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {_output(driver)}")


def _output(driver: subprocess.Popen) -> str:
    folder = Path(driver.args[driver.args.index("--out") + 1]).parents[1]
    text = [
        (folder / f).read_text()[-3000:]
        for f in ("study.out", "study.err")
        if (folder / f).exists()
    ]
    return "\n".join(text)


def _running_with_epochs(uri: str, name: str, count: int, epochs: int) -> list[Any]:
    """`count` RUNNING trials with 1..epochs-2 epochs logged (an epoch still in progress), or []."""
    runs = [r for r in _trials(uri, name) if r.info.status == "RUNNING"]
    ready = [r for r in runs if 1 <= len(_steps(uri, r.info.run_id)) <= epochs - 2]
    return ready if len(ready) >= count else []


def _finish(driver: subprocess.Popen, timeout: float = 400) -> str:
    try:
        driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)  # the study this test started
        driver.wait()
        raise AssertionError(f"the study did not finish: {_output(driver)}") from None
    output = _output(driver)
    assert driver.returncode == 0, output
    assert "Traceback" not in output, output
    return output


def _assert_every_epoch_once(uri: str, name: str, epochs: int) -> dict[str, list]:
    """One FINISHED run per trial, each with epochs 1..E logged exactly once; {trial: steps}."""
    runs = _trials(uri, name)
    trial_ids = [r.data.tags["raysl.trial_id"] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)) == 2, trial_ids  # one MLflow run per trial
    found = {}
    for run in runs:
        assert run.info.status == "FINISHED", (run.data.tags, run.info.status)
        steps = _steps(uri, run.info.run_id)
        assert [s for s, _ in steps] == list(range(1, epochs + 1)), steps
        found[run.data.tags["raysl.trial_id"]] = steps
    return found


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _trial_processes(root: int) -> list[int]:
    """The Tune trial actors (Ray names their processes `ray::ImplicitFunc...`) below `root`."""
    return [p for p in _descendants(root) if _cmdline(p).startswith("ray::ImplicitFunc")]


# ---- a trial's process killed ----------------------------------------------------------------
def test_a_killed_trial_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """SIGKILL of the trial's worker process (what a reclaimed spot node does to it), with
    tune.max_failures 1: the trial is retried from its newest checkpoint."""
    epochs = 4
    space = _space(tmp_path, "killed_trial", epochs, max_concurrent=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    driver = _start_study(tmp_path, space, uri)
    try:
        running = _wait(
            "a trial with an epoch done",
            lambda: _running_with_epochs(uri, "killed_trial", 1, epochs),
            300,
            driver,
        )
        victim = running[0].data.tags["raysl.trial_id"]
        pids = _trial_processes(driver.pid)
        assert len(pids) == 1, [(p, _cmdline(p)) for p in _descendants(driver.pid)]
        killed_at = time.time() * 1000
        os.kill(pids[0], signal.SIGKILL)  # the trial's process, found below our driver
        output = _finish(driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    steps = _assert_every_epoch_once(uri, "killed_trial", epochs)[victim]
    before = [s for s, t in steps if t <= killed_at]
    after = [s for s, t in steps if t > killed_at]
    # it went on after the kill from where its checkpoint was: no epoch repeated, at most
    # the one in progress redone
    assert before and after and before[-1] + 1 == after[0], steps
    assert "failed" not in output


# The driver, with the one change that kills each trial's process right after Tune handed its
# epoch-2 result to the study's callback: before Tune registers the checkpoint that came with it.
_KILL_IN_THE_WINDOW = """
import os, signal, sys
from pathlib import Path
from raysl.cli import main
from raysl.launch import tune_tracking

handed = tune_tracking.StudyCallback.on_trial_result
killed = Path(sys.argv.pop(1))

def on_trial_result(self, iteration, trials, trial, result, **info):
    handed(self, iteration, trials, trial, result, **info)
    done = killed.read_text().split() if killed.exists() else []
    if result.get("epoch") == 2 and trial.trial_id not in done:
        killed.write_text(" ".join([*done, trial.trial_id]))
        os.kill(result["pid"], signal.SIGKILL)

tune_tracking.StudyCallback.on_trial_result = on_trial_result
main()
"""


def test_a_trial_killed_before_its_checkpoint_registers_logs_each_epoch_once(
    tmp_path: Path,
) -> None:
    """Tune gives callbacks a result before it registers the result's checkpoint (a separate
    save step). Each trial's process is killed between the two, at epoch 2, every time: the
    retry resumes from the epoch-1 checkpoint and runs epoch 2 again, and MLflow still holds
    every epoch exactly once (`raysl.launch.epoch_log`), the value of the attempt that lasted."""
    epochs = 3
    space = _space(tmp_path, "killed_in_window", epochs, max_concurrent=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    script, killed = tmp_path / "kill_in_the_window.py", tmp_path / "killed.txt"
    script.write_text(_KILL_IN_THE_WINDOW)
    driver = _start_study(tmp_path, space, uri, program=(str(script), str(killed)))
    try:
        output = _finish(driver, timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    steps = _assert_every_epoch_once(uri, "killed_in_window", epochs)
    assert sorted(killed.read_text().split()) == sorted(steps), (killed.read_text(), steps)
    assert "failed" not in output


# ---- the MLflow server restarted ---------------------------------------------------------------
def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    log = open(tmp_path / "mlflow-server.log", "a")  # noqa: SIM115 - the server holds it
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError((tmp_path / "mlflow-server.log").read_text()[-2000:])


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the server this test started, with its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_restarted_mlflow_server_loses_no_trial_and_no_metric(tmp_path: Path) -> None:
    """The server stopped (by pid) while trials run, and started again on the same store: the
    study finishes, and the epochs logged while it was down arrive afterwards (the outbox;
    trials that end meanwhile wait in it, and the study's end waits for the server).

    MLflow's own retries (about 4 minutes by default) would hide a short outage; they are set
    to give up at once here, so the study's own queue is what delivers."""
    epochs = 5
    space = _space(tmp_path, "server_restart", epochs, max_concurrent=2)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    driver = _start_study(tmp_path, space, uri, env=quick)
    try:
        _wait(
            "a trial with an epoch done",
            lambda: _running_with_epochs(uri, "server_restart", 1, epochs),
            300,
            driver,
        )
        _stop(server)
        down_at = time.time() * 1000
        time.sleep(12)  # trials report epochs meanwhile (and may end: the study waits)
        up_at = time.time() * 1000  # no write can arrive before the restart begins
        server = _mlflow_server(tmp_path, port)
        output = _finish(driver)
        assert "does not answer; the study goes on" in output, output
        assert "answers again after" in output and "delayed writes delivered" in output, output
        assert "were not recorded" not in output
        steps = _assert_every_epoch_once(uri, "server_restart", epochs)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        _stop(server)
    # the metrics of the epochs finished while the server was down arrived after its restart
    late = [s for trial in steps.values() for s, t in trial if t >= up_at]
    assert late, steps
    assert all(t < down_at or t >= up_at for trial in steps.values() for _, t in trial)


# ---- a node lost ------------------------------------------------------------------------------
@pytest.fixture
def two_nodes() -> Iterator[Any]:
    """A head and a worker node of 1 CPU each, started here; node death noticed in ~3 s."""
    from ray.cluster_utils import Cluster

    fast = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": fast})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_a_lost_node_s_trial_is_retried_on_the_remaining_node(
    tmp_path: Path, two_nodes: Any
) -> None:
    from ray._private import ray_constants

    # 8 epochs of ~3 s: both trials must show 1..6 epochs in MLflow at once, and an epoch
    # reaches MLflow only once its checkpoint is registered (5 epochs left too short a window)
    epochs = 8
    space = _space(tmp_path, "lost_node", epochs, max_concurrent=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    worker = next(n for n in two_nodes.list_all_nodes() if not n.head)
    raylet = worker.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    driver = _start_study(tmp_path, space, uri, "--address", two_nodes.address)
    try:
        _wait(
            "a trial on each node with an epoch done",
            lambda: _running_with_epochs(uri, "lost_node", 2, epochs),
            300,
            driver,
        )
        on_worker = _trial_processes(raylet.pid)
        assert len(on_worker) == 1  # one trial per node (1 CPU each)
        lost_at = time.time() * 1000
        os.kill(raylet.pid, signal.SIGKILL)  # the worker node's raylet, started by this test
        raylet.wait(timeout=30)
        _finish(driver, timeout=500)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    steps = _assert_every_epoch_once(uri, "lost_node", epochs)
    resumed = [t for t in steps.values() if t[-1][1] > lost_at and t[0][1] < lost_at]
    # both trials were mid-run at the loss and both finished after it, every epoch once: the
    # lost node's trial went on from its checkpoint on the head
    assert len(resumed) == 2, steps


# ---- Ctrl-C ---------------------------------------------------------------------------------
def test_ctrl_c_prints_the_resume_hint_and_the_study_resumes(tmp_path: Path) -> None:
    """SIGINT to the driver mid-trial: exit 130 with the exact --resume command (no traceback,
    e.g. from formatting a metric the trial never reported), and that command finishes it."""
    epochs = 3
    space = _space(tmp_path, "interrupted", epochs, max_concurrent=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    driver = _start_study(tmp_path, space, uri)
    try:
        _wait("a trial running", lambda: [r for r in _trials(uri, "interrupted")], 300, driver)
        os.kill(driver.pid, signal.SIGINT)  # what Ctrl-C sends the driver
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    err = (tmp_path / "study.err").read_text()
    assert driver.returncode == 130, _output(driver)
    out = tmp_path / "runs" / "interrupted"
    hint = f"interrupted; continue with: raysl tune {space} --out {out} --resume"
    assert hint in err and "Traceback" not in err, err
    resumed = _start_study(tmp_path, space, uri, "--resume")
    _finish(resumed)
    _assert_every_epoch_once(uri, "interrupted", epochs)


@pytest.mark.parametrize("again", [True, False], ids=["checked", "repeated"])
def test_a_write_the_server_applied_before_it_went_away_is_not_repeated(
    tmp_path: Path, again: bool
) -> None:
    """The server applies an epoch's metrics and then stops before its answer arrives (what
    the restart test hit on CI: epoch 1 twice). Queued, the write is sent again once the server
    is back; sent again as `trial_result_again` (what studies use) the metrics already there are
    not appended a second time, and the tag that rode with them is kept. Sent again as plain
    `trial_result` (`repeated`) MLflow holds the epoch twice: the check makes the difference."""
    from mlflow.tracking import MlflowClient

    from raysl.tracking import StudyTracker
    from raysl.tracking.outbox import Outbox

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            tracker = StudyTracker(uri, "applied", "study")
            tracker.trial_started("t0", "trial_t0", {"seed": 0}, ["seed"])
            lines: list[str] = []
            box = Outbox(uri, echo=lines.append)

            def applied_then_lost(trial_id: str, metrics: dict, step: int) -> None:
                nonlocal server
                tracker.trial_result(trial_id, metrics, step)  # the server applies it ...
                _stop(server)  # ... and goes away before the client hears back
                raise ConnectionResetError("connection reset by peer")

            metrics = {"val/knn_top1": 61.0, "train/loss": 5.5}
            resend = tracker.trial_result_again if again else tracker.trial_result
            box.call("result", applied_then_lost, "t0", metrics, 1, again=resend)
            assert len(box.pending) == 1 and "does not answer" in lines[0], lines
            server = _mlflow_server(tmp_path, port)
            assert box.flush() and not box.pending
            run_id = tracker._run_of("t0")
            client = MlflowClient(uri)
            steps = [m.step for m in client.get_metric_history(run_id, "val/knn_top1")]
            assert steps == ([1] if again else [1, 1]), steps
            assert client.get_run(run_id).data.tags["raysl.epochs"] == "1"
            tracker.study_ended(None, "completed")
    finally:
        _stop(server)


def test_writes_that_never_reach_the_server_are_reported_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the outbox: a server that does not come back (nothing listens on the
    port) leaves one line naming what was not recorded; a store that answers with an error
    (a bad run id in SQLite) raises at once instead of queueing."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from raysl.tracking.outbox import Outbox

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []
    box = Outbox(uri, echo=lines.append)
    client = MlflowClient(uri)
    box.call("result", client.set_tag, "trial_a", "raysl.status", "running")
    box.call("result", client.set_tag, "trial_b", "raysl.status", "running")
    assert len(box.pending) == 2 and len(lines) == 1 and "does not answer" in lines[0]
    gap = box.gap(wait_s=0)
    assert gap is not None and "\n" not in gap, gap
    assert f"MLflow server {uri} unreachable since" in gap and "2 writes (trial_a, trial_b)" in gap

    local = Outbox(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(MlflowException):
        local.call("result", MlflowClient(local.uri).set_tag, "no-such-run", "k", "v")
    assert not local.pending
