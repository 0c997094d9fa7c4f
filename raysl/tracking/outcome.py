"""What a study found, in words and on its parent run: the gain over the baseline, the
finalists' means, the Pareto front.

- **Gain over the baseline.** The winner's ranking value minus the baseline trial's
  (`best − baseline` for `mode: max`, `baseline − best` for `min`: positive when the search
  found something better). A trial's ranking value is its mean over seeds where finalists
  re-ran it, else its last epoch's value. The parent gets the metric
  `study/gain_over_baseline` and the tags `raysl.baseline_trial_id`,
  `raysl.gain_over_baseline`; the summary says "best beats the baseline #0 by +1.20
  (val/knn_top1 97.92 vs 96.72)" or that no trial beat it.
- **Pareto front** (several objectives): the parent's tag `raysl.pareto_trials` (`#2,#4`),
  `raysl.pareto=true` on each front trial's run; there is no single gain (the summary says
  whether the baseline is on the front).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raysl.tracking.board import PARETO
from raysl.tracking.describe import number, study_summary
from raysl.tracking.ranking import BASELINE, MEAN, SEEDS

GAIN_METRIC = "study/gain_over_baseline"


def study_board(study: Any, tune: Any) -> list[dict[str, Any]]:
    """Every trial of `study` ranked (`rank_trials`); a multi-objective study's Pareto front
    first (`raysl.tracking.pareto.pareto_board`)."""
    from raysl.tracking.pareto import pareto_board
    from raysl.tracking.ranking import rank_trials

    rows = rank_trials(study, None, tune.metric, tune.mode)
    return pareto_board(rows, tune.goals) if tune.multi_objective else rows


def ranking_value(row: Mapping[str, Any], metric: str) -> float | None:
    """The mean over seeds of a finalist, else the value at the trial's last epoch."""
    return row.get(MEAN) if row.get(SEEDS) else row.get(metric)


def baseline_gain(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> dict | None:
    """`{"gain", "best", "baseline", "best_row", "baseline_row"}` of a single-objective board
    (ranked, the winner first); None without a baseline trial or a value to compare."""
    base = next((r for r in rows if r.get(BASELINE)), None)
    if base is None or not rows:
        return None
    best, baseline = ranking_value(rows[0], metric), ranking_value(base, metric)
    if best is None or baseline is None:
        return None
    gain = best - baseline if mode == "max" else baseline - best
    return {
        "gain": gain,
        "best": best,
        "baseline": baseline,
        "best_row": rows[0],
        "baseline_row": base,
    }


def summary_line(rows: Sequence[Mapping[str, Any]], tune: Any) -> str:
    """`study_summary`, then what the search gained over the baseline."""
    text = study_summary(rows, tune.metric, objectives=tune.objectives)
    clause = baseline_clause(rows, tune)
    return f"{text}; {clause}" if clause else text


def baseline_clause(rows: Sequence[Mapping[str, Any]], tune: Any) -> str:
    base = next((r for r in rows if r.get(BASELINE)), None)
    if base is None:
        return ""
    name = f"the baseline {_label(base)}"
    if tune.multi_objective:
        return f"{name} is {'on' if base.get(PARETO) else 'not on'} the Pareto front"
    found = baseline_gain(rows, tune.metric, tune.mode)
    if found is None:
        return f"{name} has no {tune.metric}"
    metric = tune.metric
    best = _value(found["best"], metric) + _seeds(found["best_row"])
    baseline = _value(found["baseline"], metric) + _seeds(base)
    short = f"; {name} stopped@{base.get('epochs')}" if base.get("status") == "stopped" else ""
    if found["best_row"] is base:
        return f"no trial beats {name} ({metric} {baseline})"
    if found["gain"] <= 0:
        return f"no trial beats {name} ({metric} {baseline}, best {best}{short})"
    gain = _signed(found["gain"], metric)
    return f"best beats {name} by {gain} ({metric} {best} vs {baseline}{short})"


def _seeds(row: Mapping[str, Any]) -> str:
    return f" mean of {row[SEEDS]} seeds" if row.get(SEEDS) else ""


def record_outcome(tracker: Any, rows: Sequence[Mapping[str, Any]], tune: Any) -> None:
    """The gain (or the Pareto front) on the parent run and the trials' runs."""
    base = next((r for r in rows if r.get(BASELINE)), None)
    tags: dict[str, Any] = {}
    if base is not None:
        tags["raysl.baseline_trial_id"] = base["trial_id"]
    if tune.multi_objective:
        on = [r for r in rows if r.get(PARETO)]
        tags["raysl.pareto_trials"] = ",".join(_label(r) for r in on)
        for row in on:
            tracker.client.set_tag(row["run_id"], "raysl.pareto", "true")
    elif (found := baseline_gain(rows, tune.metric, tune.mode)) is not None:
        tags["raysl.gain_over_baseline"] = f"{found['gain']:.6g}"
        tracker.log_study_metrics({GAIN_METRIC: found["gain"]})
    if tags:
        tracker.set_study_tags(tags)


def _label(row: Mapping[str, Any]) -> str:
    return f"#{row['number']}" if row.get("number") is not None else str(row["trial_id"])


def _value(value: float, metric: str) -> str:
    accuracy = metric.endswith(("top1", "top5", "acc"))
    return f"{value:.2f}" if accuracy else number(value, metric)


def _signed(value: float, metric: str) -> str:
    accuracy = metric.endswith(("top1", "top5", "acc"))
    return f"{value:+.2f}" if accuracy else f"{value:+.3g}"
