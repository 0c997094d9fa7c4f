"""Words for people in the MLflow UI: trial run names, descriptions, the study's question and summary.

- Trial run name: `#3 completed val 97.9`, `#5 stopped@5 val 45.8`, `#6 failed`, `#2 running`:
  the Optuna trial number (as in optuna-dashboard), the status and the study's metric at the
  trial's last epoch (the value it is ranked by).
- Trial description (`mlflow.note.content`, the run page's Description): the searched values,
  the status, epochs run, why it stopped, its last and best value, and what the loss metrics
  mean.
- Study description: the question from the search-space file's header comment, then the
  one-line summary and the command.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_NOTE = (
    "`train/loss` is the weighted sum of the loss terms, the value minimised; "
    "`train/loss/<term>` is each term unweighted; `train/weight/<term>` is a term's weight "
    "per epoch, logged only where it changes (a ramp)."
)


def metric_label(metric: str) -> str:
    """`val/knn_top1` -> `val` (the study's usual metric); other metrics keep their last part."""
    return "val" if metric == "val/knn_top1" else metric.rsplit("/", 1)[-1]


def number(value: float | None, metric: str = "") -> str:
    """A value for people: accuracies (percent) with one decimal, others with 3 significant digits."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    if metric.endswith(("top1", "top5", "acc")):
        return f"{value:.1f}"
    return f"{value:.3g}"


def trial_run_name(
    optuna_number: int | None,
    status: str,
    metric: str | None = None,
    value: float | None = None,
    stopped_at: int | None = None,
    fallback: str = "",
) -> str:
    """`#3 completed val 97.9`; `fallback` when the trial has no Optuna number."""
    if optuna_number is None:
        return fallback
    name = f"#{optuna_number} {status}" + (f"@{stopped_at}" if stopped_at else "")
    if metric and value is not None and math.isfinite(value):
        name += f" {metric_label(metric)} {number(value, metric)}"
    return name


def short_key(key: str) -> str:
    """A searched key, short: `loss.infonce.temperature` -> `infonce τ`, `optim.lr` -> `lr`."""
    parts = key.split(".")
    last = {"temperature": "τ"}.get(parts[-1], parts[-1])
    if parts[0] == "loss" and len(parts) == 3:
        return f"{parts[1]} {last}"
    return last


def short_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.3g}"


def searched_line(searched: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={short_value(value)}" for key, value in searched.items()) or "-"


def trial_note(
    study: str,
    optuna_number: int | None,
    trial_id: str,
    searched: Mapping[str, Any],
    status: str,
    epochs: int | None = None,
    reason: str = "",
    metric: str | None = None,
    last: float | None = None,
    best: tuple[float, int] | None = None,
) -> str:
    """The trial's description (Markdown)."""
    head = f"Trial #{optuna_number}" if optuna_number is not None else f"Trial {trial_id}"
    lines = [
        f"**{head}** of study `{study}` (Ray trial `{trial_id}`).",
        "",
        f"Searched: {searched_line(searched)}.",
        "",
        f"Status: **{status}**"
        + (f" after {epochs} epoch(s)" if epochs else "")
        + (f"; {reason}" if reason else "")
        + ".",
    ]
    if metric and last is not None:
        text = f"{metric}: {number(last, metric)} at its last epoch (the value it is ranked by)"
        if best is not None:
            text += f", best {number(best[0], metric)} at epoch {best[1]}"
        lines += ["", text + "."]
    lines += ["", LOSS_NOTE]
    return "\n".join(lines)


def study_summary(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    trials: int | None = None,
    objectives: Sequence[tuple[str, str]] = (),
) -> str:
    """`8 trials: 3 completed, 5 stopped; best #3 97.9 % (val/knn_top1, last epoch)`; with
    finalists `best #3 97.5 ± 0.3 % over 3 seeds (val/knn_top1, mean)`; with several
    `objectives` `Pareto front (val/knn_top1 max, cost/device_hours min): #2, #4`."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    order = ("completed", "stopped", "failed", "interrupted", "running")
    parts = [f"{counts[s]} {s}" for s in order if s in counts]
    parts += [f"{n} {s}" for s, n in counts.items() if s not in order]
    text = f"{trials if trials is not None else len(rows)} trials: " + ", ".join(parts or ["none"])
    if len(objectives) > 1:
        goals = ", ".join(f"{m} {mode}" for m, mode in objectives)
        front = [_label(r) for r in rows if r.get("pareto")]
        return text + f"; Pareto front ({goals}): {', '.join(front) or 'none'}"
    best = rows[0] if rows else None
    unit = " %" if metric.endswith(("top1", "top5", "acc")) else ""
    if best is not None and best.get("seeds"):
        std = best.get("std_over_seeds")
        spread = f" ± {number(std, metric)}" if std is not None else ""
        mean = number(best["mean_over_seeds"], metric)
        text += f"; best {_label(best)} {mean}{spread}{unit} over {best['seeds']} seeds"
        text += f" ({metric}, mean)"
    elif best is not None and best.get(metric) is not None:
        text += f"; best {_label(best)} {number(best[metric], metric)}{unit} ({metric}, last epoch)"
    return text


def _label(row: Mapping[str, Any]) -> str:
    return f"#{row['number']}" if row.get("number") is not None else str(row["trial_id"])


def study_question(path: str | Path | None) -> str:
    """The question a search-space file's header comment asks, or "".

    The header is the file's leading `#` lines. Its `Question (study):` sentence is preferred
    (files that are both a run and a study ask two questions), else `Question:`; the question
    runs to its first `?`. Without either, the header's first paragraph minus command lines.
    """
    if path is None:
        return ""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    header: list[str] = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line[1:].strip())
    text = " ".join(header)
    for marker in ("Question (study):", "Question:"):
        at = text.find(marker)
        if at >= 0:
            rest = text[at + len(marker) :].strip()
            end = rest.find("?")
            return rest[: end + 1] if end >= 0 else rest
    kept = []
    for line in header:
        if not line:
            break
        if re.match(r"raysl \w+ ", line):
            continue
        kept.append(line)
    return " ".join(kept)
