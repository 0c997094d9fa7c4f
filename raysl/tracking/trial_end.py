"""What a trial run gets when it ends (name, description, best epoch), and the study's system metrics."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raysl.tracking.describe import trial_note, trial_run_name
from raysl.yamlio import parse_value

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)


def describe_end(
    client: MlflowClient,
    run_id: str,
    about: Mapping[str, Any],
    status: str,
    reason: str,
    metric: str | None,
    mode: str = "max",
) -> dict[str, Any]:
    """Rename the ended trial's run (`#3 completed val 97.9`) and return its end tags: the
    description and the best epoch of `metric` (`raysl.best_value`, `raysl.best_epoch`).

    Everything comes from the run itself where this driver did not see it (a study resumed by
    another driver): the Optuna number and epochs from its tags, the searched values from its
    params, the last and best value from its metric history.

    Args:
        about: what the tracker knows: `number`, `searched` ({key: value}), `epochs`, `study`.
    """
    run = client.get_run(run_id)
    tags = run.data.tags
    number = about.get("number")
    if number is None and tags.get("raysl.optuna_trial"):
        number = int(tags["raysl.optuna_trial"])
    epochs = about.get("epochs")
    if epochs is None and tags.get("raysl.epochs"):
        epochs = int(tags["raysl.epochs"])
    searched = about.get("searched") or {
        key: parse_value(run.data.params[key])
        for key in tags.get("raysl.searched", "").split(",")
        if key in run.data.params
    }
    out: dict[str, Any] = {}
    last = best = None
    if metric:
        history = sorted(
            (m.step, m.value)
            for m in client.get_metric_history(run_id, metric)
            if math.isfinite(m.value)
        )
        if history:
            last = history[-1][1]
            sign = 1 if mode == "max" else -1
            step, value = max(history, key=lambda h: (sign * h[1], -h[0]))  # earliest best
            best = (value, step)
            out.update({"raysl.best_value": value, "raysl.best_epoch": step})
    stopped = epochs if status == "stopped" else None
    name = trial_run_name(number, status, metric, last, stopped, fallback="")
    if name:
        client.update_run(run_id, name=name)
    out["mlflow.note.content"] = trial_note(
        str(about.get("study", "")), number, tags.get("raysl.trial_id", ""), searched, status,
        epochs, reason, metric, last, best,
    )  # fmt: skip
    return out


def system_monitor(run_id: str, tracking_uri: str, resume: bool) -> Any:
    """MLflow's system-metrics monitor on `run_id` (a daemon thread sampling CPU, memory, disk,
    network and, with pynvml, GPUs every 10 s), started; None where psutil is missing."""
    try:
        import psutil  # noqa: F401  (mlflow's monitor needs it)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        logger.info("no system metrics: psutil is not installed")
        return None
    try:
        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)
        monitor.start()
    except Exception:
        logger.warning("could not start MLflow's system metrics", exc_info=True)
        return None
    return monitor
