"""Batched MLflow writes with explicit run ids: params once, tags, numeric metrics."""

from __future__ import annotations

import json
import logging
import numbers
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag

from raysl.yamlio import flatten

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

MAX_PARAM = 6000  # MLflow's limit on a param value
MAX_TAG = 5000  # well under MLflow's 8000 for a tag value
BATCH = 100  # params or tags per log_batch call (MLflow's limit)
METRICS_BATCH = 1000


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any], resumed: bool) -> None:
    """Log `params` (nested mappings become dotted keys) as text.

    MLflow params are immutable: with `resumed`, keys the run already has are skipped, and
    a changed value is reported in the log instead of failing the study.
    """
    wanted = {k: param_value(v) for k, v in flatten(params).items()}
    if resumed:
        logged = client.get_run(run_id).data.params
        changed = sorted(k for k in wanted if k in logged and logged[k] != wanted[k])
        if changed:
            logger.warning(
                "run %s keeps its first values of %s (MLflow params cannot change)",
                run_id,
                ", ".join(changed),
            )
        wanted = {k: v for k, v in wanted.items() if k not in logged}
    items = [Param(k, v) for k, v in wanted.items()]
    for i in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[i : i + BATCH])


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, str(v)[:MAX_TAG]) for k, v in tags.items()]
    for i in range(0, len(items), BATCH):
        client.log_batch(run_id, tags=items[i : i + BATCH])


def log_metrics(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, Any],
    step: int,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Every real-valued entry (NaN and inf included) at `step`; other values are skipped.

    `tags` go in the same request as the first metrics, so a server that fails part-way
    cannot keep the metrics without them."""
    now = int(time.time() * 1000)
    items = _metrics_at(metrics, step, now)
    first = [RunTag(k, str(v)[:MAX_TAG]) for k, v in (tags or {}).items()]
    for i in range(0, max(len(items), 1), METRICS_BATCH):
        client.log_batch(run_id, metrics=items[i : i + METRICS_BATCH], tags=first)
        first = []


def logged_at(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int) -> bool:
    """Whether the run already holds `metrics` at `step` (read from one of them: they are
    logged in one request). A write whose request failed checks this before it is sent again:
    MLflow appends metrics, so a request applied before its answer was lost would repeat."""
    items = _metrics_at(metrics, step, 0)
    if not items:
        return False
    history = client.get_metric_history(run_id, items[0].key)
    return any(m.step == int(step) for m in history)


def _metrics_at(metrics: Mapping[str, Any], step: int, now: int) -> list[Metric]:
    return [
        Metric(metric_key(k), float(v), now, int(step))
        for k, v in metrics.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    ]


def param_value(value: Any) -> str:
    """A param as text that `raysl.yamlio.parse_value` reads back to the same value."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        text = str(value)
    else:
        try:
            text = json.dumps(value)
        except TypeError:
            text = str(value)
    return text[:MAX_PARAM]


def metric_key(key: str) -> str:
    """MLflow metric names: letters, digits, `_ - . / : space`, no empty path parts."""
    key = re.sub(r"[^\w\-. /:]", "_", str(key))
    return "/".join(part for part in key.split("/") if part not in ("", ".", "..")) or "_"
