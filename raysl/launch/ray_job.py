"""A study as a Ray Job: the search-space file travels in the job's `working_dir`.

`raysl launch` calls `submit_study` once `ray up` is done and the dashboard is forwarded to
this machine; the tests call it against a local two-node cluster. The entrypoint is
`raysl tune <space> --address auto --storage <storage> ...`, run on the head; it finds the
head's MLflow server through `MLFLOW_TRACKING_URI`, which the cluster file's start commands put
into every Ray process.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StudyJob:
    """What is submitted: `working_dir` (a fresh directory holding the space file) and the
    shell entrypoint that runs in it."""

    submission_id: str
    entrypoint: str
    working_dir: Path
    space: Path

    def prepare(self) -> None:
        """Create `working_dir` holding the space file (nothing is written before this)."""
        self.working_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.space, self.working_dir / self.space.name)


def study_job(
    space: Path,
    storage: str,
    name: str,
    overrides: Sequence[str] = (),
    out: str | None = None,
    tracking_uri: str | None = None,
    space_on_head: str | None = None,
) -> StudyJob:
    """The job for `space`; its `working_dir` (a new directory under the system's temp dir)
    is only created by `StudyJob.prepare`.

    The entrypoint copies the space file next to the study directory and runs from there:
    Ray may delete a job's working_dir while its driver still runs (seen with Ray 2.60: the
    study finished, then Tune's last `os.getcwd()` failed), and the copy is what
    `raysl tune ... --resume` needs later.

    Args:
        overrides: `KEY=VALUE` strings passed on as `--set`.
        out: the study directory on the head (default `~/raysl/runs/<name>`).
        tracking_uri: pass `--tracking-uri`; by default the head's `MLFLOW_TRACKING_URI`.
        space_on_head: where the head finds the file (default: in the job's working_dir).
    """
    submission_id = f"raysl-{name}-{uuid.uuid4().hex[:8]}"
    out = (out or f"~/raysl/runs/{name}").rstrip("/")
    home, _, folder = out.rpartition("/")
    home = home or "."
    copy = ["mkdir", "-p", home, "&&", "cp", space_on_head or space.name, f"{home}/", "&&"]
    words = ["raysl", "tune", space.name, "--address", "auto", "--storage", storage]
    words += ["--out", folder, "-q"]
    if tracking_uri:
        words += ["--tracking-uri", tracking_uri]
    for item in overrides:
        words += ["--set", item]
    entrypoint = " ".join(_quote(w) for w in [*copy, "cd", home, "&&", *words])
    working_dir = Path(tempfile.gettempdir()) / submission_id
    return StudyJob(submission_id, entrypoint, working_dir, space)


def _quote(word: str) -> str:
    if word == "&&" or (word.startswith("~/") and " " not in word):
        return word  # shell syntax, and ~ must stay unquoted to expand
    return shlex.quote(word)


def submit_command(job: StudyJob, dashboard: str) -> str:
    """The `ray job submit` command equivalent to `submit_study` (for --dry-run)."""
    return (
        f"ray job submit --address {dashboard} --submission-id {job.submission_id} "
        f"--working-dir {job.working_dir} -- {shlex.quote(job.entrypoint)}"
    )


def submit_study(job: StudyJob, dashboard: str, timeout: float = 60) -> str:
    """Submit `job` to the cluster whose dashboard answers at `dashboard`; returns its id."""

    client = _client(dashboard, timeout)
    job.prepare()
    # env_vars must not repeat a key the driver's ray.init sets (raysl.launch.session): Ray
    # refuses to merge a job's and its driver's runtime envs that conflict.
    runtime_env = {"working_dir": str(job.working_dir), "env_vars": {"PYTHONUNBUFFERED": "1"}}
    try:
        return client.submit_job(
            entrypoint=job.entrypoint, submission_id=job.submission_id, runtime_env=runtime_env
        )
    finally:
        shutil.rmtree(job.working_dir, ignore_errors=True)  # uploaded by now


def follow_job(
    job_id: str, dashboard: str, echo: Callable[[str], None] = print, timeout: float | None = None
) -> str:
    """Stream the job's log lines to `echo` until it ends; returns its final status
    (SUCCEEDED, FAILED or STOPPED)."""
    from ray.job_submission import JobSubmissionClient

    client: JobSubmissionClient = _client(dashboard, 60)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            for line in chunk.splitlines():
                echo(line)

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        client.stop_job(job_id)
    deadline = time.time() + 60
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(1)
        status = client.get_job_status(job_id)
    return str(status.value)


def _client(dashboard: str, timeout: float) -> Any:
    """A JobSubmissionClient, retried while the dashboard is still starting."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + timeout
    while True:
        try:
            return JobSubmissionClient(dashboard)
        except (ConnectionError, RuntimeError):
            if time.time() > deadline:
                raise
            time.sleep(1)
