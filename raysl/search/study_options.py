"""What a study does besides sampling: its objectives, the baseline trial, the finalists.

Parsed from `tune:` (`parse_objectives`, `parse_baseline`, `parse_finalists`, called by
`raysl.search.tune.parse_tune`) and checked against the config and the searched params
(`check_study_options`, called by `raysl.search.load`), all before Ray starts:

- **Objectives.** `metric: val/knn_top1, mode: max`, or lists of equal length for a
  multi-objective study (`metric: [val/knn_top1, cost/device_hours]`, `mode: [max, min]`;
  Optuna's multi-objective TPE through Ray's `OptunaSearch`). Each must be reported every
  epoch (`raysl.search.load.epoch_metrics`: the per-k kNN metrics `val/knn_top1_k<k>` where
  `eval.knn_k` lists several k). A scheduler ranks trials by one metric, so a multi-objective
  study refuses one (without `scheduler:` it has none: every trial runs its full budget).
- **Baseline** (`baseline: true`, the default): the first trial (Optuna trial 0, enqueued)
  runs the base config, every searched key at its base value (`SearchSpec.baseline`). A base
  value the search space cannot hold (outside a range, not among the choices, off an int
  step) is an error naming `search.<key>`: Optuna would otherwise run something else and call
  it the baseline. Widen the range, change the config, or set `baseline: false`.
- **Finalists** (`finalists: {top: K, seeds: S, baseline: true}`, off by default):
  single-objective only, not under PBT (a PBT trial's config changes as it trains); K may not
  exceed `num_samples`; `baseline` re-runs the baseline trial with the same seeds as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysl.config import Config
from raysl.search.problems import Problems, is_int
from raysl.search.spec import Finalists, Param, Pbt, TuneSettings, freeze, is_number

FINALIST_KEYS = ("top", "seeds", "baseline")
MODES = ("max", "min")


def parse_objectives(raw: Mapping[str, Any], out: Problems) -> tuple[str, str, tuple]:
    """`(metric, mode, objectives)`: the first objective, and every (metric, mode) pair of a
    multi-objective study (`()` for one objective)."""
    d = TuneSettings()
    metric, mode = raw.get("metric", d.metric), raw.get("mode", d.mode)
    if isinstance(metric, list) and len(metric) == 1:  # one objective, written as a list
        metric = metric[0]
        mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode
    if not isinstance(metric, list):
        if not isinstance(metric, str) or not metric:
            out.add(f"must be a metric name such as val/knn_top1 (got {metric!r})", "tune.metric")
            metric = d.metric
        if isinstance(mode, list):
            out.add(
                f"lists {len(mode)} directions but tune.metric names one metric ({metric}): "
                "write mode: max or min, or list one metric per direction",
                "tune.mode",
            )
            mode = d.mode
        elif mode not in MODES:
            out.add(f"must be max or min (got {mode!r})", "tune.mode")
            mode = d.mode
        return metric, mode, ()
    if not metric or not all(isinstance(m, str) and m for m in metric):
        out.add(
            "must be a metric name, or a list of them for a multi-objective study, e.g. "
            f"[val/knn_top1, cost/device_hours] (got {metric!r})",
            "tune.metric",
        )
        return d.metric, d.mode, ()
    if len(set(metric)) < len(metric):
        out.add(f"lists a metric twice ({metric}): list each objective once", "tune.metric")
        return d.metric, d.mode, ()
    example = ", ".join("max" if m.startswith("val/") else "min" for m in metric)
    if not isinstance(mode, list) or len(mode) != len(metric):
        got = f"{len(mode)} directions" if isinstance(mode, list) else repr(mode)
        out.add(
            f"tune.metric lists {len(metric)} objectives, so mode must list {len(metric)} "
            f"directions, one per metric, e.g. [{example}] (got {got})",
            "tune.mode",
        )
        return d.metric, d.mode, ()
    if bad := [m for m in mode if m not in MODES]:
        out.add(f"each direction must be max or min (got {bad[0]!r})", "tune.mode")
        return d.metric, d.mode, ()
    objectives = tuple(zip(metric, mode, strict=True))
    return metric[0], mode[0], objectives


def parse_baseline(raw: Mapping[str, Any], out: Problems) -> bool:
    value = raw.get("baseline", True)
    if not isinstance(value, bool):
        out.add(
            f"must be true (the base config runs as the first trial) or false (got {value!r})",
            "tune.baseline",
        )
        return True
    return value


def parse_finalists(raw: Any, out: Problems) -> Finalists | None:
    """`null`/`false`/`none` (off), `true` (top 3, seeds 2, the baseline re-run too) or
    `{top: K, seeds: S, baseline: B}`."""
    at = "tune.finalists"
    if raw is None or raw is False or raw == "none":
        return None
    if raw is True:
        return Finalists()
    if not isinstance(raw, Mapping):
        out.add(f"must be null or {{top: 3, seeds: 2}} (got {raw!r})", at)
        return None
    out.unknown_keys(raw, FINALIST_KEYS, at)
    d = Finalists()
    baseline = raw.get("baseline", d.baseline)
    if not isinstance(baseline, bool):
        out.add(
            "must be true (re-run the baseline trial with the finalists' seeds, so the gain "
            f"over it is a mean against a mean) or false (got {baseline!r})",
            f"{at}.baseline",
        )
        baseline = d.baseline
    return Finalists(
        top=out.integer(raw, "top", at, d.top, 1, ", the best full-budget trials to re-run"),
        seeds=out.integer(raw, "seeds", at, d.seeds, 1, ", other seeds per finalist"),
        baseline=baseline,
    )


def check_study_options(
    base: Config,
    params: tuple[Param, ...],
    tune: TuneSettings,
    allowed: list[str],
    out: Problems,
) -> None:
    """What needs the config and the params: the objectives, the baseline, the finalists.

    Args:
        allowed: the metrics every trial reports every epoch (`epoch_metrics`).
    """
    for metric, mode in tune.goals:
        check_metric(metric, mode, allowed, out)
    count = len(tune.goals)
    if tune.multi_objective and tune.scheduler is not None:
        name = type(tune.scheduler).__name__.upper()
        out.add(
            f"{name} ranks trials by one metric and cannot compare them on {count} objectives "
            "(tune.metric is a list): set scheduler: none (every trial runs its full budget)",
            "tune.scheduler",  # a multi-objective study has none unless it names one
        )
    if tune.finalists is not None:
        if tune.multi_objective:
            out.add(
                f"finalists are ranked by their mean over seeds of one metric; tune.metric "
                f"lists {count}: name one metric, or set finalists: null",
                "tune.finalists",
            )
        elif isinstance(tune.scheduler, Pbt):
            out.add(
                "PBT trials change their config during training, so a re-run with another seed "
                "is not the same trial: set finalists: null (retrain the winner's "
                "best_config.yaml, its schedule, with --set seed=N instead)",
                "tune.finalists",
            )
        elif tune.finalists.top > tune.num_samples:
            out.add(
                f"top {tune.finalists.top} > num_samples {tune.num_samples}: re-run at most "
                "as many trials as the study runs",
                "tune.finalists.top",
            )
    if tune.baseline:
        check_baseline(base, params, out)


def check_metric(metric: str, mode: str, allowed: list[str], out: Problems) -> None:
    """One objective: reported every epoch of every trial, never test/*, the natural mode."""
    import difflib

    if metric.startswith("test/"):
        out.add(
            f"{metric} is on the test split, which is never tuned on (it is reported at the end "
            "of each trial, for information only): use val/knn_top1",
            "tune.metric",
        )
    elif metric not in allowed:
        close = difflib.get_close_matches(metric, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        if metric.startswith("val/knn_top1_k"):
            why = "is reported only where eval.knn_k lists several k (e.g. knn_k: [200, 20])"
        elif metric.startswith("val/"):
            why = "is reported once, at the end, not every epoch"
        else:
            why = "is not reported every epoch of every trial"
        out.add(f"{metric} {why}; {hint}allowed: {', '.join(allowed)}", "tune.metric")
    elif metric.startswith("val/") and mode != "max":
        out.add(f"{metric} is an accuracy: set mode: max", "tune.mode")
    elif metric.startswith(("train/loss", "cost/")) and mode != "min":
        what = "a loss" if metric.startswith("train/") else "a cost"
        out.add(f"{metric} is {what}: set mode: min", "tune.mode")


def knn_k_metrics(base: Config, params: tuple[Param, ...]) -> list[str]:
    """`val/knn_top1_k<k>` for every k each trial reports: the k of a listed `eval.knn_k`, or
    the k every searched choice of lists has in common."""
    searched = next((p for p in params if p.key == "eval.knn_k"), None)
    if searched is None:
        ks = list(base.eval.knn_k) if isinstance(base.eval.knn_k, list) else []
    elif searched.kind == "choice" and all(isinstance(c, tuple) for c in searched.choices or ()):
        choices = list(searched.choices or ())
        ks = [k for k in choices[0] if all(k in c for c in choices)]
    else:
        ks = []
    return [f"val/knn_top1_k{k}" for k in ks]


def check_baseline(base: Config, params: tuple[Param, ...], out: Problems) -> None:
    """Every searched key the baseline sets must be a value its distribution holds."""
    values = base.to_flat()
    for p in params:
        if p.when is not None and not p.when.holds(values):
            continue
        value = values.get(p.key)
        if p.kind == "choice":
            held = any(_same(freeze(value), c) for c in p.choices or ())
            space = f"not among the choices {[_shown(c) for c in p.choices or ()]}"
        elif value is None:
            held = False
            space = (
                f"null (a default chosen elsewhere, e.g. by a preset), which [{p.low:g}, "
                f"{p.high:g}] cannot hold: set config.{p.key} to the number it stands for"
            )
        elif not is_number(value):
            held, space = False, f"not a number in [{p.low:g}, {p.high:g}]"
        else:
            step = p.step or 1
            on_grid = p.kind != "int" or (is_int(value) and (value - p.low) % step == 0)
            held = bool(p.low <= value <= p.high and on_grid)  # type: ignore[operator]
            space = f"outside [{p.low:g}, {p.high:g}]" if on_grid else f"not on the step {step}"
        if not held:
            fix = (
                "or set tune.baseline: false"
                if value is None
                else f"include it in the search, change config.{p.key}, or set tune.baseline: false"
            )
            shown = "" if value is None else f"{_shown(value)}, "
            out.add(
                f"the baseline trial (tune.baseline: true) runs the base config, whose {p.key} "
                f"is {shown}{space}: {fix}",
                f"search.{p.key}",
            )


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _shown(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
