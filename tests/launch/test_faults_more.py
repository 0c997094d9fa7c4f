"""More real faults with Ray (issue 16): a Ray Train run that never fits, a driver killed
outright, a study interrupted by Ctrl-C or by a signal Tune catches itself.

Each command runs as a user would (`python -m raysl` in a session of its own). While it runs
the test records every process of that session (Ray's GCS, raylet, agents and workers, raysl's
watcher); once the command has exited, each one must be gone. Faults are signals to the pid of
the command this test started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import REPO, TINY, one_line, snapshot
from tests.launch.test_ray_tune import study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]


class Watched:
    """`python -m raysl ARGS` in a new session, with every process of that session recorded."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "raysl", *map(str, args)],
            cwd=cwd,
            stdout=open(cwd / "cmd.out", "w"),  # noqa: SIM115 - the child holds them
            stderr=open(cwd / "cmd.err", "w"),  # noqa: SIM115
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )
        self.seen: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()

    def _record(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter():
                try:
                    if process.pid != self.proc.pid and os.getsid(process.pid) == self.proc.pid:
                        self.seen.setdefault(process.pid, process)
                except (OSError, psutil.Error):
                    continue
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"the command did not end: {self.output()}") from None

    def output(self) -> str:
        return "\n".join((self.cwd / f).read_text()[-3000:] for f in ("cmd.out", "cmd.err"))

    def survivors(self, within: float = 30.0) -> list[str]:
        """The recorded processes still running `within` seconds after the command ended."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + within
        while True:
            alive = [p for p in self.seen.values() if _alive(p)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        names = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in alive if _alive(p)]
        self.kill_all()
        return names

    def kill_all(self) -> None:
        """End what this test started (its command and that command's session), by pid."""
        for process in [*self.seen.values()]:
            if _alive(process):
                process.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _run_file(tmp_path: Path, **flat) -> Path:
    from raysl.yamlio import unflatten

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "run", "config": unflatten({**TINY, **flat})}))
    return path


# ---- item 2: a Ray Train run that can never fit, and a driver killed ---------------------------
def test_ray_train_workers_that_need_a_missing_gpu_are_one_line_and_leave_no_process(
    tmp_path: Path,
) -> None:
    import torch

    gpus = 64 if torch.cuda.is_available() else 1  # more than any one node here has
    run = _run_file(tmp_path)
    before = snapshot(tmp_path)
    cmd = Watched("train", run, "--workers", "1", "--gpus-per-worker", gpus, cwd=tmp_path)
    code = cmd.wait(timeout=240)
    err = (tmp_path / "cmd.err").read_text()
    survivors = cmd.survivors()
    assert code == 2, cmd.output()
    one_line(err, ("--gpus-per-worker", f"each worker needs {gpus} GPU", "local Ray cluster"))
    assert len(cmd.seen) >= 2  # Ray really started (GCS, raylet, ...) and is gone again
    assert not survivors, survivors
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cmd.")} == before


def test_a_killed_ray_train_driver_leaves_no_ray_process(tmp_path: Path) -> None:
    """SIGKILL runs nothing in the driver: Ray's agents and workers used to outlive it."""
    run = _run_file(tmp_path, epochs=200, **{"data.synthetic.num_samples": 512})
    cmd = Watched("train", run, "--out", tmp_path / "run", "--workers", "1", "-q", cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not _ray_train_actors(cmd):  # Ray Train's controller (or a worker) runs
        assert cmd.proc.poll() is None and time.monotonic() < deadline, cmd.output()
        time.sleep(0.3)
    os.kill(cmd.proc.pid, signal.SIGKILL)
    assert cmd.wait(timeout=30) == -signal.SIGKILL
    survivors = cmd.survivors()
    assert not survivors, survivors


def _ray_train_actors(cmd: Watched) -> list[int]:
    """Pids of Ray Train's actors (`ray::TrainController...`, `ray::RayTrainWorker...`) in the
    command's session: by then its agents and idle workers run too."""
    found = []
    for process in list(cmd.seen.values()):
        try:
            if " ".join(process.cmdline()).startswith(
                ("ray::TrainController", "ray::RayTrainWorker")
            ):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


# ---- item 2: a study interrupted ---------------------------------------------------------------
def _trial_runs(uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    try:
        experiment = MlflowClient(uri).get_experiment_by_name(name)
        if experiment is None:
            return []
        return MlflowClient(uri).search_runs(
            [experiment.experiment_id], "tags.`raysl.kind` = 'trial'"
        )
    except Exception:  # the store is being created
        return []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGUSR1"])
def test_an_interrupted_study_says_so_and_how_to_resume(tmp_path: Path, sig: str) -> None:
    """SIGINT is Ctrl-C (a KeyboardInterrupt in the driver); SIGUSR1 is caught by Ray Tune
    itself, which then stops the trials and returns from `fit()` as if the study were done."""
    from mlflow.tracking import MlflowClient

    space = study_file(tmp_path, name="stopped", num_samples=3, scheduler="none", max_concurrent=1)
    doc = yaml.safe_load(space.read_text())
    doc["config"]["epochs"] = 3
    doc["config"]["data"]["synthetic"]["num_samples"] = 384  # epochs of about a second
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "runs" / "stopped"
    cmd = Watched("tune", space, "--out", out, "--tracking-uri", uri, "-q", cwd=tmp_path)
    deadline = time.monotonic() + 300
    # Ctrl-C once a trial finished and the next runs; SIGUSR1 in the first trial
    wanted = ["FINISHED", "RUNNING"] if sig == "SIGINT" else ["RUNNING"]
    while True:
        runs = _trial_runs(uri, "stopped")
        if sorted(r.info.status for r in runs) == wanted:
            break
        assert cmd.proc.poll() is None and time.monotonic() < deadline, cmd.output()
        time.sleep(0.3)
    os.kill(cmd.proc.pid, getattr(signal, sig))
    code = cmd.wait(timeout=180)
    survivors = cmd.survivors()
    err = (tmp_path / "cmd.err").read_text()
    assert code == 130, cmd.output()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err + cmd.output(), err
    line = lines[0]
    again = f"raysl tune {space} --out {out} --resume --tracking-uri {uri} -q"
    assert f"interrupted; continue with: {again}" in line, line
    assert f"{len(wanted) - 1} of 3 trials finished" in line, line
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("stopped")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`raysl.kind` = 'study'")
    assert parent.data.tags["raysl.status"] == "interrupted" and parent.info.status == "KILLED"
    trials = {r.data.tags.get("raysl.status") for r in _trial_runs(uri, "stopped")}
    assert trials == ({"completed", "interrupted"} if sig == "SIGINT" else {"interrupted"}), trials
    assert not survivors, survivors
