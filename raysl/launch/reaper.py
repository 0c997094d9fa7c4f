"""Every process a command's local Ray cluster started is gone when the command is.

`ray.shutdown()` stops the local cluster when the driver leaves normally or on Ctrl-C, but a
driver killed outright (SIGKILL, SIGTERM, a closed terminal) runs no Python: Ray's GCS and
raylet share its fate, yet their children (the dashboard and runtime-env agents, idle
workers) are reparented to init and live on (measured with Ray 2.60: `ray::DashboardAgent`
and `ray::RuntimeEnvAgent` still running a minute after the driver's SIGKILL).

`start_reaper()` starts a small watcher process (`python -m raysl.launch.reaper PID`, which
forks and leaves at once, so the watcher is no child the driver must wait for) that records the driver's descendants every half second while the driver lives and, once it is
gone, ends those still running (SIGTERM, then SIGKILL after 3 s). Only processes that
descended from this driver are touched (psutil checks each one's start time, so a reused pid
is not), never a cluster the command joined. The watcher ignores SIGINT and SIGTERM so that a
Ctrl-C or a `kill` of the whole process group still leaves it to clean up; it exits with the
driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 3.0


def start_reaper() -> subprocess.Popen | None:
    """Start the watcher of this process's descendants; None where psutil is missing."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return None
    starter = subprocess.Popen(
        [sys.executable, "-m", "raysl.launch.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    starter.wait()  # it forks the watcher and leaves: the watcher is no child of this process
    return starter


def watch(driver_pid: int) -> None:
    """Record `driver_pid`'s descendants until it exits, then end those still running."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    seen: dict[int, psutil.Process] = {}
    while _alive(driver):
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    left = [p for p in seen.values() if _alive(p)]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, still = psutil.wait_procs(left, timeout=GRACE_S)
    for process in still:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:  # the watcher; its parent returns at once to `start_reaper`
        watch(int(sys.argv[1]))
    os._exit(0)
