"""The leaderboard's columns, one definition for `raysl tune`, `raysl report` and MLflow's table.

Rows come from `raysl.tracking.ranking.rank_trials`. Columns, in this order:

| column | what it is |
| --- | --- |
| `#` | rank: full-budget trials first, then stopped, then failed; by the ranking value |
| `trial` | the Optuna trial number (`#3`; Ray's trial id where there is none); `#0 base`: the baseline (the base config) |
| `status` | as `raysl.status`, with the epochs run where the trial ran short (`stopped@5`) |
| `Pareto` | multi-objective studies: `★` on the Pareto front (listed first); then one `<metric> last` per objective instead of the next two |
| `<metric> last` | the metric at the trial's last epoch: the value that ranks it (and that Optuna was told) |
| `best (epoch)` | the trial's best epoch value of the metric and that epoch (`62.50 (3)`) |
| `mean±std (n)` | studies with finalists: the metric over the trial and its re-runs with other seeds (what ranks the finalists, first) |
| one per searched key | short names (`infonce τ` for `loss.infonce.temperature`); `-` where a conditional key was not searched |

Numbers are rounded for people: accuracies to 2 decimals, params to 3 significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from raysl.tracking.describe import short_key, short_value
from raysl.tracking.ranking import BASELINE, BEST, BEST_EPOCH, MEAN, SEEDS, STD

PARETO = "pareto"  # a multi-objective study's rows: on the Pareto front (raysl.tracking.pareto)


def columns(
    metric: str,
    searched: Sequence[str],
    rows: Sequence[Mapping[str, Any]] = (),
    objectives: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """`[(label, key), ...]` of the leaderboard; keys of the `rank_trials` rows. `objectives`:
    every metric of a multi-objective study; `rows` tell whether there are finalists."""
    if len(objectives) > 1:
        values = [("Pareto", PARETO), *((f"{m} last", m) for m in objectives)]
    else:
        values = [(f"{metric} last", metric), ("best (epoch)", BEST)]
    if any(r.get(SEEDS) for r in rows):
        values.append(("mean±std (n)", MEAN))
    return [
        ("#", "rank"),
        ("trial", "number"),
        ("status", "status"),
        *values,
        *((short_key(k), k) for k in searched),
    ]


def cell(row: Mapping[str, Any], key: str, metric: str) -> str:
    """One leaderboard cell as text."""
    value = row.get(key)
    if key == "number":
        label = f"#{value}" if value is not None else str(row.get("trial_id", ""))
        return label + (" base" if row.get(BASELINE) else "")
    if key == PARETO:
        return "★" if value else ""
    if key == MEAN:
        if value is None:
            return "-"
        std = row.get(STD)
        spread = f" ± {_metric(std, metric)}" if std is not None else ""
        return f"{_metric(value, metric)}{spread} ({row.get(SEEDS)})"
    if key == "status":
        epochs = row.get("epochs")
        short = value in ("stopped", "failed", "interrupted") and epochs
        return f"{value}@{epochs}" if short else str(value)
    if key == BEST:
        if value is None:
            return "-"
        epoch = row.get(BEST_EPOCH)
        return _metric(value, metric) + (f" ({epoch})" if epoch is not None else "")
    if key == metric or "/" in key:  # a metric (searched keys are dotted, never with /)
        return _metric(value, key)
    if value is None:
        return "-"
    return short_value(value)


def records(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    searched: Sequence[str],
    objectives: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """The leaderboard as columns of rounded values (for `mlflow.log_table`), same labels."""
    out: dict[str, list[Any]] = {}
    for label, key in columns(metric, searched, rows, objectives):
        if key in (metric, BEST) or "/" in key:
            accuracy = (metric if key == BEST else key).endswith(("top1", "top5", "acc"))
            round_ = (lambda v: _round(v, 2)) if accuracy else _significant
            out[label] = [round_(r.get(key)) for r in rows]
            if key == BEST:
                out["best epoch"] = [r.get(BEST_EPOCH) for r in rows]
        elif key == MEAN:
            out["mean over seeds"] = [_round(r.get(MEAN), 2) for r in rows]
            out["std over seeds"] = [_round(r.get(STD), 2) for r in rows]
            out["seeds"] = [r.get(SEEDS) for r in rows]
        elif key == PARETO:
            out[label] = [bool(r.get(PARETO)) for r in rows]
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
