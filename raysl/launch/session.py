"""Starting and joining Ray quietly: Ray's own chatter goes to log files, not the terminal."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

# Ray prints a warning per actor about spilled constructor arguments, and Train V2's
# placement-group cleaner polls a dashboard that a local run does not start.
_QUIET_ENV = {
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's new output prints its banner even at verbose=0
    # snapshot the experiment state on every loop (default: at most every 10 s), so a killed
    # driver's study resumes knowing every trial it started
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    # Ctrl-C raises KeyboardInterrupt in the driver (Tune's own handler would end the study as
    # if it had completed): the CLI ends the MLflow runs as interrupted and prints how to resume
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


# A custom resource of the local clusters raysl starts: a trial that only drives a Ray Train run
# (several workers) reserves a sliver of it instead of CPU, so `workers x cpu` may use every CPU.
DRIVER_RESOURCE = "raysl_driver"


@contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, log_file: Path | None = None
) -> Iterator[None]:
    """Connect to the Ray cluster at `address` (or start a local one) for the duration.

    Workers' output stays in Ray's session logs (`ray.init(log_to_driver=False)`); the driver's
    Ray logging goes to `log_file`. A local cluster this function started is shut down on exit;
    a cluster it joined is left running.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # not only a default: with Tune's handler a Ctrl-C would end the study as if completed
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _log_ray_to(log_file)
    started = not ray.is_initialized()
    if started:
        local = address is None and not os.environ.get("RAY_ADDRESS")
        if not local:  # a few seconds, not ray.init's minutes of retries against nothing
            from raysl.launch.address import check_address

            check_address(address or os.environ.get("RAY_ADDRESS"))
        _watch_descendants()  # what the cluster starts is gone with this process, even killed
        ray.init(
            # "local": a fresh cluster, never one a `ray start` left on this machine (which
            # `address=None` would join, and then refuse the resources below)
            address="local" if local else address,
            num_cpus=num_cpus if local else None,
            resources={DRIVER_RESOURCE: 1.0} if local else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
            runtime_env={"env_vars": dict(_QUIET_ENV)},
        )
        _log_ray_to(log_file)  # ray.init resets the handlers of the "ray" logger
    restore = _route_cluster_messages()
    try:
        yield
    finally:
        restore()
        if started:
            ray.shutdown()


_REAPER: list = []  # the watcher of this process's descendants (`raysl.launch.reaper`), once


def _watch_descendants() -> None:
    if not _REAPER:
        from raysl.launch.reaper import start_reaper

        _REAPER.append(start_reaper())


def _route_cluster_messages() -> Callable[[], None]:
    """Send the cluster's warnings and errors (raylet, autoscaler) to the log, not stdout.

    Ray's driver prints them through `ray._private.worker.print_to_stdstream` whatever
    `log_to_driver` says; that private function is swapped for the session's duration.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        return lambda: None
    logger = logging.getLogger("ray")

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            logger.warning("(%s) %s", data.get("pid", "cluster"), line)

    ray_worker.print_to_stdstream = to_log

    def restore() -> None:
        ray_worker.print_to_stdstream = original

    return restore


# `ray.init` clears the "ray" logger's handlers and then logs (e.g. the token-authentication
# notice); a handler on the emitting loggers themselves keeps those lines off the terminal.
_LOGGERS = (
    "ray",
    "ray.train",
    "ray.tune",
    "ray.data",
    "ray._private.authentication.authentication_token_setup",
)


def _log_ray_to(log_file: Path | None) -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                logger.removeHandler(handler)
        if log_file is not None:
            handler = logging.FileHandler(log_file)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
            )
            logger.addHandler(handler)
