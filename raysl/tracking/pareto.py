"""The Pareto front of a multi-objective study: which trials, the leaderboard's order, run files.

A trial is on the front when no other trial is at least as good on every objective and
better on one (Deb et al., 2002, "A fast and elitist multiobjective genetic algorithm:
NSGA-II", the non-dominated set; Optuna's `Study.best_trials` is the same set over its
COMPLETE trials). Only trials that ran their full budget with a finite value of every
objective take part: a failed or interrupted trial's last values are not its result.
The values are the trials' last logged values (`rank_trials` rows, read from MLflow), the
ones Optuna was told.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from raysl.tracking.board import PARETO
from raysl.tracking.describe import number as shown


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    signs = [1.0 if m == "max" else -1.0 for m in modes]
    better = [s * x - s * y for s, x, y in zip(signs, a, b, strict=True)]
    return all(d >= 0 for d in better) and any(d > 0 for d in better)


def front(points: Mapping[str, Sequence[float]], modes: Sequence[str]) -> set[str]:
    """The keys of `points` that no other point dominates."""
    return {
        key
        for key, p in points.items()
        if not any(dominates(q, p, modes) for other, q in points.items() if other != key)
    }


def objective_values(
    rows: Sequence[Mapping[str, Any]], goals: Sequence[tuple[str, str]]
) -> dict[str, tuple[float, ...]]:
    """`{trial_id: (value per objective)}` of the completed trials with every value finite."""
    out = {}
    for row in rows:
        values = [row.get(m) for m, _ in goals]
        if row.get("status") == "completed" and all(
            isinstance(v, int | float) and math.isfinite(v) for v in values
        ):
            out[row["trial_id"]] = tuple(float(v) for v in values)  # type: ignore[arg-type]
    return out


def pareto_board(
    rows: Sequence[Mapping[str, Any]], goals: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """`rows` (`rank_trials`, ranked by the first objective) with the Pareto front first, in
    that order, then the others; `pareto` (True on the front) after `status`; ranks renewed."""
    on = front(objective_values(rows, goals), [m for _, m in goals])
    ordered = sorted(rows, key=lambda r: r["trial_id"] not in on)  # stable: keeps the order
    out = []
    for rank, row in enumerate(ordered, start=1):
        marked: dict[str, Any] = {}
        for key, value in row.items():
            marked[key] = rank if key == "rank" else value
            if key == "status":
                marked[PARETO] = row["trial_id"] in on
        out.append(marked)
    return out


def label(row: Mapping[str, Any]) -> str:
    return f"#{row['number']}" if row.get("number") is not None else str(row["trial_id"])


def values_line(row: Mapping[str, Any], goals: Sequence[tuple[str, str]]) -> str:
    """`val/knn_top1 56.2, cost/device_hours 0.00123`."""
    return ", ".join(f"{m} {shown(row.get(m), m)}" for m, _ in goals)


def write_run_files(
    rows: Sequence[Mapping[str, Any]],
    goals: Sequence[tuple[str, str]],
    config_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    out_dir: Path,
    name: str,
) -> list[Path]:
    """One run file per Pareto trial, `out_dir/<name>_trial_<number>.yaml` (`raysl train` it);
    files of an earlier run of the study that are not on the front any more are removed.

    Args:
        config_of: a row -> the trial's config (dotted or nested).
    """
    from raysl.runfile import run_file_text

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        if not row.get(PARETO):
            continue
        stem = f"{name}_trial_{row['number'] if row.get('number') is not None else row['trial_id']}"
        description = f"Pareto trial {label(row)} of study {name}: {values_line(row, goals)}"
        path = out_dir / f"{stem}.yaml"
        path.write_text(run_file_text(stem, description, config_of(row)), encoding="utf-8")
        written.append(path)
    for stale in set(out_dir.glob("*.yaml")) - set(written):
        stale.unlink()
    return written


def log_run_files(
    tracker: Any,
    rows: Sequence[Mapping[str, Any]],
    goals: Sequence[tuple[str, str]],
    config_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    out_dir: Path,
    name: str,
) -> str:
    """`write_run_files`, logged as the parent's artifacts `pareto/`; one line for people."""
    files = write_run_files(rows, goals, config_of, out_dir, name)
    if files:
        with tracker._lock:
            tracker.client.log_artifacts(tracker.parent_run_id, str(out_dir), "pareto")
    return f"Pareto front: {len(files)} run file(s) in {out_dir}/ (raysl train FILE retrains one)"
