"""The leaderboard of a study: its trials ranked by one metric, as rows and as files."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysl.errors import ConfigError, Problem
from raysl.tracking.store import open_client, search_all, slug
from raysl.yamlio import parse_value

_FIRST = ("rank", "number", "trial_id", "status", "epochs")
_LAST = ("run_id", "trial_name")
BEST, BEST_EPOCH = "best", "best_epoch"  # a trial's best epoch value of the metric, and when
BASELINE = "baseline"  # the trial that ran the base config (tag raysl.baseline)
# finalists (`tune.finalists`): the metric's mean and sample std over the trial and its
# re-runs with other seeds, and how many of them completed (None for other trials)
MEAN, STD, SEEDS = "mean_over_seeds", "std_over_seeds", "seeds"


@dataclass(frozen=True)
class Study:
    """A study's parent run, its trials' child runs (`mlflow.entities.Run`) and the finalists'
    re-runs with other seeds (tag `raysl.kind=finalist`, `raysl.finalist_of=<trial id>`)."""

    experiment: str
    parent: Any
    trials: list[Any]
    finalists: list[Any] = field(default_factory=list)


def newest_study(tracking_uri: str, name: str) -> Study:
    """The most recently started study (parent run) of experiment `name`, with its trials.

    Raises:
        ConfigError: no store, no such experiment (the message lists those there), or no study.
    """
    client = open_client(tracking_uri, must_exist=True)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise ConfigError(
            Problem(
                f"no experiment {name!r} in {tracking_uri}; experiments there: "
                + (", ".join(names) or "none (run a study first)"),
                key="NAME",
            )
        )
    eid = experiment.experiment_id
    parents = client.search_runs(
        [eid], "tags.`raysl.kind` = 'study'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not parents:
        raise ConfigError(
            Problem(f"experiment {name!r} holds no raysl study (no run tagged raysl.kind=study)")
        )
    parent = parents[0]
    children = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`raysl.kind`"
    trials = search_all(client, eid, f"{children} = 'trial'")
    finalists = search_all(client, eid, f"{children} = 'finalist'")
    return Study(name, parent, trials, finalists)


def rank_trials(
    study: Study, top: int | None = 10, metric: str = "val/knn_top1", mode: str = "max"
) -> list[dict[str, Any]]:
    """One row per trial, best first by the trial's last reported `metric`; the top `top`.

    Row keys, the same in every row: rank, number (the Optuna trial number), trial_id (Ray's),
    status, epochs, `metric` (its value at the trial's last epoch: what ranks it), best and
    best_epoch (the trial's best epoch value of the study's metric, tags the study writes),
    baseline (whether it ran the base config), in a study with finalists mean_over_seeds,
    std_over_seeds and seeds (`finalist_stats`), the searched params (typed back from their
    text; None where a conditional param was not searched), every other metric (last value),
    run_id, trial_name.
    As the study's own leaderboard (and its best trial): the finalists first, by their mean
    over seeds, then trials that ran their full budget, then those ASHA stopped or that were
    interrupted, then failed ones; trials without the metric (or NaN) last within each group.
    """
    if mode not in ("max", "min"):
        raise ConfigError(Problem(f"must be max or min (got {mode!r})", key="--mode"))
    logged = {key for run in study.trials for key in run.data.metrics}
    if logged and metric not in logged:
        raise ConfigError(
            Problem(
                f"no trial of study {study.parent.info.run_name!r} logged {metric!r}; "
                f"logged metrics: {', '.join(sorted(logged))}",
                key="--metric",
            )
        )
    searched = searched_keys(study)
    others = sorted(logged - {metric, "epoch"})
    rows = [_row(run, metric, searched, others) for run in study.trials]
    stats = finalist_stats(study, metric) if study.finalists else None
    extra = [MEAN, STD, SEEDS] if stats is not None else []
    for row in rows:
        row.update(dict.fromkeys(extra))
        if stats is not None and row["trial_id"] in stats:
            row.update(stats[row["trial_id"]])
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(
        key=lambda r: (
            r.get(SEEDS) is None,
            sign * r[MEAN] if r.get(MEAN) is not None else 0.0,
            0 if r["status"] == "completed" else 2 if r["status"] == "failed" else 1,
            r[metric] is None,
            sign * r[metric] if r[metric] is not None else 0.0,
            r["trial_id"],
        )
    )
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    keys = (*_FIRST, metric, BEST, BEST_EPOCH, BASELINE, *extra, *searched, *others, *_LAST)
    rows = [{key: row[key] for key in keys} for row in rows]
    return rows[:top] if top else rows


def finalist_stats(study: Study, metric: str) -> dict[str, dict[str, Any]]:
    """`{trial_id: {mean_over_seeds, std_over_seeds, seeds}}` of each trial that finalists
    re-ran: over the trial's last value of `metric` and each completed re-run's (the original
    counts as one seed); std is the sample standard deviation (None for one value)."""
    values: dict[str, list[float]] = {}
    for run in study.trials:
        value = run.data.metrics.get(metric)
        if value is not None and math.isfinite(value):
            values[run.data.tags.get("raysl.trial_id", "")] = [value]
    for run in sorted(study.finalists, key=lambda r: r.data.tags.get("raysl.seed", "")):
        of, value = run.data.tags.get("raysl.finalist_of"), run.data.metrics.get(metric)
        done = run.data.tags.get("raysl.status") == "completed"
        if of in values and done and value is not None and math.isfinite(value):
            values[of].append(value)
    reran = {r.data.tags.get("raysl.finalist_of") for r in study.finalists}
    out = {}
    for trial_id in reran & set(values):
        seeds = values[trial_id]
        mean = sum(seeds) / len(seeds)
        std = (
            math.sqrt(sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1))
            if len(seeds) > 1
            else None
        )
        out[trial_id] = {MEAN: mean, STD: std, SEEDS: len(seeds)}
    return out


def searched_keys(study: Study) -> list[str]:
    """The keys searched in any trial of `study`, in the search space's order where the parent
    records it (`raysl.search_order`), else sorted."""
    keys = {
        key for run in study.trials for key in run.data.tags.get("raysl.searched", "").split(",")
    } - {""}
    order = [k for k in study.parent.data.tags.get("raysl.search_order", "").split(",") if k]
    return [k for k in order if k in keys] + sorted(keys - set(order))


def leaderboard(
    tracking_uri: str,
    name: str,
    top: int | None = 10,
    metric: str = "val/knn_top1",
    mode: str = "max",
) -> list[dict[str, Any]]:
    """The ranked trials of the newest study of experiment `name` (see `rank_trials`)."""
    return rank_trials(newest_study(tracking_uri, name), top, metric, mode)


def write_leaderboard(rows: list[Mapping[str, Any]], out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `out_dir/<name>_leaderboard.parquet` and `.csv`; returns both paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{slug(name)}_leaderboard"
    columns = list(rows[0]) if rows else list(_FIRST)
    arrays = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        try:
            arrays[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
            arrays[column] = pa.array([None if v is None else str(v) for v in values], pa.string())
    parquet = stem.with_suffix(".parquet")
    pq.write_table(pa.table(arrays), parquet)
    csv_path = stem.with_suffix(".csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return parquet, csv_path


def _row(run: Any, metric: str, searched: list[str], others: list[str]) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    value = metrics.get(metric)
    epochs = tags.get("raysl.epochs", metrics.get("epoch", tags.get("raysl.stopped_at_epoch")))
    number = tags.get("raysl.optuna_trial")
    best = tags.get("raysl.best_value") if tags.get("raysl.metric") == metric else None
    best_epoch = tags.get("raysl.best_epoch") if best is not None else None
    return {
        BASELINE: tags.get("raysl.baseline") == "true",
        "number": int(number) if number not in (None, "") else None,
        "trial_id": tags.get("raysl.trial_id", run.info.run_name),
        "status": tags.get("raysl.status") or run.info.status.lower(),
        "epochs": int(float(epochs)) if epochs is not None else None,
        metric: value if value is not None and math.isfinite(value) else None,
        BEST: float(best) if best is not None else None,
        BEST_EPOCH: int(best_epoch) if best_epoch is not None else None,
        **{key: _final_value(key, params, metrics) for key in searched},
        **{key: metrics.get(key) for key in others},
        "run_id": run.info.run_id,
        "trial_name": run.info.run_name,
    }


def _final_value(key: str, params: Mapping[str, str], metrics: Mapping[str, float]) -> Any:
    """A searched key's value: its param, or in a PBT trial (`pbt/exploits` logged) the value in
    force at its end, which the per-epoch metric of a mutated key tracks (`train/weight/<term>`,
    `config/<key>`): MLflow params keep a trial's first values."""
    value = parse_value(params[key]) if key in params else None
    if "pbt/exploits" in metrics:
        parts = key.split(".")
        final = metrics.get(f"config/{key}")
        if final is None and parts[-1] == "weight":
            final = metrics.get(f"train/weight/{parts[1]}")
        if final is not None and isinstance(value, int | float) and not isinstance(value, bool):
            return int(final) if isinstance(value, int) else final
    return value
