"""The leaderboard's columns, one definition for `raysl tune`, `raysl report` and MLflow's table.

Rows come from `raysl.tracking.ranking.rank_trials`. Columns, in this order:

| column | what it is |
| --- | --- |
| `#` | rank: full-budget trials first, then stopped, then failed; by the ranking value |
| `trial` | the Optuna trial number (`#3`; Ray's trial id where there is none) |
| `status` | as `raysl.status`, with the epochs run where the trial ran short (`stopped@5`) |
| `<metric> last` | the metric at the trial's last epoch: the value that ranks it (and that Optuna was told) |
| `best (epoch)` | the trial's best epoch value of the metric and that epoch (`62.50 (3)`) |
| one per searched key | short names (`infonce τ` for `loss.infonce.temperature`); `-` where a conditional key was not searched |

Numbers are rounded for people: accuracies to 2 decimals, params to 3 significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from raysl.tracking.describe import short_key, short_value
from raysl.tracking.ranking import BEST, BEST_EPOCH


def columns(metric: str, searched: Sequence[str]) -> list[tuple[str, str]]:
    """`[(label, key), ...]` of the leaderboard; keys of the `rank_trials` rows."""
    return [
        ("#", "rank"),
        ("trial", "number"),
        ("status", "status"),
        (f"{metric} last", metric),
        ("best (epoch)", BEST),
        *((short_key(k), k) for k in searched),
    ]


def cell(row: Mapping[str, Any], key: str, metric: str) -> str:
    """One leaderboard cell as text."""
    value = row.get(key)
    if key == "number":
        return f"#{value}" if value is not None else str(row.get("trial_id", ""))
    if key == "status":
        epochs = row.get("epochs")
        short = value in ("stopped", "failed", "interrupted") and epochs
        return f"{value}@{epochs}" if short else str(value)
    if key == BEST:
        if value is None:
            return "-"
        epoch = row.get(BEST_EPOCH)
        return _metric(value, metric) + (f" ({epoch})" if epoch is not None else "")
    if key == metric:
        return _metric(value, metric)
    if value is None:
        return "-"
    return short_value(value)


def records(
    rows: Sequence[Mapping[str, Any]], metric: str, searched: Sequence[str]
) -> dict[str, list[Any]]:
    """The leaderboard as columns of rounded values (for `mlflow.log_table`), same labels."""
    out: dict[str, list[Any]] = {}
    for label, key in columns(metric, searched):
        if key in (metric, BEST):
            out[label] = [_round(r.get(key), 2) for r in rows]
            if key == BEST:
                out["best epoch"] = [r.get(BEST_EPOCH) for r in rows]
        elif key in ("number", "status"):
            out[label] = [cell(r, key, metric) for r in rows]
        elif key == "rank":
            out[label] = [r.get(key) for r in rows]
        else:
            out[label] = [_significant(r.get(key)) for r in rows]
    out["run name"] = [r.get("trial_name") for r in rows]
    return out


def _metric(value: Any, metric: str) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.2f}" if metric.endswith(("top1", "top5", "acc")) else f"{value:.4g}"


def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def _significant(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.3g}")
    return value
