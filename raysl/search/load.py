"""`load_search_spec`: read a study file and check all of it before anything starts.

Each problem names the file (or `--set`), the line, the key and the fix; the problems of a
stage are raised together as one `ConfigError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raysl.config import Config, validate
from raysl.errors import ConfigError, Problem
from raysl.runfile import load_run_file
from raysl.search.params import order, parse_params
from raysl.search.pbt import check_pbt
from raysl.search.problems import Problems
from raysl.search.spec import Param, Pbt, SearchSpec, TuneSettings
from raysl.search.study_options import check_study_options, knn_k_metrics
from raysl.search.tune import parse_tune
from raysl.yamlio import flatten, merge, unflatten

# what `fit` reports every epoch, besides train/loss/<term> and train/weight/<term> (ramps)
EPOCH_METRICS = (
    "val/knn_top1",
    "train/loss",
    "lr",
    "train/throughput",
    "train/epoch_time",
    "time/elapsed",
    "cost/device_hours",  # seconds inside fit() x devices held / 3600 (raysl.runtime)
)


def load_search_spec(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    num_samples: int | None = None,
) -> SearchSpec:
    """Load a study file (a run file + `search:` + `tune:`) and validate all of it.

    Args:
        path: the YAML file. Without `search:` and `tune:` it loads as a spec with no params
            and the file's config (a plain run).
        overrides: `--set` dotted keys. Config keys change the base config (a searched key
            set this way is fixed, no longer searched); `tune.*` keys change the tune section.
        num_samples: `--num-samples`; replaces `tune.num_samples`.

    The base config is the file's `config:`, then `tune.config:` (overrides for the study's
    trials only; `raysl train` ignores them), then `--set`. In a study whose metric is a
    `val/` metric, `eval.every` is set to 1: Tune needs the metric in every epoch's report
    (noted in `SearchSpec.notes`).

    Raises:
        ConfigError: one line per problem (file:line, key, fix).
    """
    overrides = dict(overrides or {})
    tune_set = {k: v for k, v in overrides.items() if k.split(".")[0] == "tune"}
    config_set = {k: v for k, v in overrides.items() if k not in tune_set}
    if bad := [k for k in config_set if k.split(".")[0] == "search"]:
        raise ConfigError(
            [Problem("ranges cannot be set with --set: edit the file", k, "--set") for k in bad]
        )
    run = load_run_file(path)
    out = Problems(str(run.path), run.lines, tune_set)
    raw_tune = unflatten(tune_set).get("tune", {})
    if not isinstance(raw_tune, Mapping):
        raise ConfigError(Problem("set keys under tune, e.g. tune.num_samples=4", "tune", "--set"))
    raw_tune = merge(run.tune or {}, raw_tune)
    searched = run.search or {}
    notes = [
        f"{k} fixed at {v!r} by --set (not searched)"
        for k, v in config_set.items()
        if k in searched
    ]

    base = run.config
    trial_config = raw_tune.pop("config", None)
    if trial_config is not None:
        if not isinstance(trial_config, Mapping):
            out.add(
                "must map config keys to values for the trials, e.g. {epochs: 25}", "tune.config"
            )
            out.raise_if_any()
        raw = merge(base.model_dump(exclude_none=True), unflatten(flatten(trial_config)))
        base = validate(raw, where=out.where, lines=run.lines, prefix="tune.config.")
    base = base.override(config_set)
    if run.search is None and run.tune is None and not tune_set:
        return SearchSpec(run.name, run.path, base, (), TuneSettings())

    if run.search is not None and not run.search:
        out.add(
            "nothing to search: add `dotted.key: {distribution}` lines, or remove search:", "search"
        )
    params = parse_params(run.search or {}, base, out, fixed=config_set)
    tune = parse_tune(raw_tune, out)
    if num_samples is not None:
        if isinstance(num_samples, int) and num_samples >= 1:
            tune = dataclasses.replace(tune, num_samples=num_samples)
        else:
            out.found.append(Problem(f"must be >= 1 (got {num_samples!r})", "--num-samples"))
    out.raise_if_any()
    ordered = order(params, out)
    out.raise_if_any()
    base = _cross_check(base, ordered, tune, out, notes)
    out.raise_if_any()
    return SearchSpec(run.name, run.path, base, ordered, tune, tuple(notes))


def _cross_check(
    base: Config, params: tuple[Param, ...], tune: TuneSettings, out: Problems, notes: list[str]
) -> Config:
    """What needs the config, the params and the tune settings together."""
    searched = {p.key: p for p in params}
    _check_extremes(base, params, out)
    _check_conditions(base, params, out)
    _check_knn_bank(base, searched.get("eval.knn_k"), out)
    check_study_options(base, params, tune, epoch_metrics(base, params), out)

    workers = tune.resources.workers
    batch = searched.get("data.batch_size")
    if batch is None:
        sizes = [base.data.batch_size]
    elif batch.kind == "choice":
        sizes = [int(s) for s in batch.choices or ()]
    else:
        sizes = [int(batch.low or 0), batch.step or 1]  # low and every step from it
    if workers > 1 and any(s % workers for s in sizes):
        out.add(
            f"data.batch_size ({', '.join(map(str, sizes))}) must be divisible by workers "
            f"({workers}): each worker takes batch_size / workers; change one of them",
            "search.data.batch_size" if batch else "tune.resources.workers",
        )
    if base.device == "cuda" and tune.resources.gpu == 0:
        out.add(
            "the config's device is cuda but trials reserve no GPU: set gpu: 1",
            "tune.resources.gpu",
        )
    if base.device == "cpu" and tune.resources.gpu > 0:
        out.add(
            "the config's device is cpu but trials reserve a GPU: set gpu: 0", "tune.resources.gpu"
        )

    if isinstance(tune.scheduler, Pbt):
        base = check_pbt(base, params, tune, out, notes)
    elif tune.scheduler is not None:
        if "epochs" in searched:
            out.add(
                "ASHA's max_t is the config's epochs: do not search epochs with a scheduler "
                "(or set tune.scheduler: none)",
                "search.epochs",
            )
        elif tune.scheduler.grace_period > base.epochs:
            out.add(
                f"grace_period {tune.scheduler.grace_period} > epochs {base.epochs}: ASHA could "
                f"never stop a trial; set grace_period <= {base.epochs}, or scheduler: none",
                "tune.scheduler.asha.grace_period",
            )
    val = next((m for m, _ in tune.goals if m.startswith("val/")), None)
    if val is not None:
        if "eval.every" in searched:
            out.add(
                f"{val} is needed every epoch: do not search eval.every",
                "search.eval.every",
            )
        elif base.eval.every != 1:
            if isinstance(tune.scheduler, Pbt):
                why = "PBT compares trials at every interval"
            elif tune.scheduler is not None:
                why = "ASHA compares trials at the same epoch"
            else:
                why = "Optuna's intermediate values and the curves are per epoch"
            notes.append(
                f"eval.every set from {base.eval.every} to 1: Tune needs {val} in every "
                f"epoch's report ({why})"
            )
            base = base.override({"eval.every": 1})
    return base


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "true/false" if isinstance(value, bool) else "null"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "list"


def _check_conditions(base: Config, params: tuple[Param, ...], out: Problems) -> None:
    """A `when:` that compares a number with a string (`weight == abc`) never holds: refuse it."""
    searched = {p.key: p for p in params}
    flat = base.to_flat()
    for p in params:
        when = p.when
        if when is None:
            continue
        source = searched.get(when.key)
        if source is not None:
            kinds = (
                {_kind(c) for c in source.choices or ()} if source.kind == "choice" else {"number"}
            )
        elif flat.get(when.key) is not None:
            kinds = {_kind(flat[when.key])}
        else:
            continue  # a key the base config does not hold (e.g. an absent term): reads as null
        wanted = {_kind(v) for v in when.value} if when.op == "in" else {_kind(when.value)}
        if when.op in (">", ">=", "<", "<="):
            wanted = {"number"}
        if kinds & wanted:
            continue
        shown, other = " or ".join(sorted(kinds)), " or ".join(sorted(wanted))
        never = "is always true" if when.op == "!=" else "never holds"
        out.add(
            f"when: '{when}' compares {when.key} (a {shown}) with a {other}, so it {never}; "
            f"compare with a {shown}",
            f"search.{p.key}.when",
            f"search.{p.key}",
        )


def _check_knn_bank(base: Config, knn: Param | None, out: Problems) -> None:
    """`eval.knn_k` (its largest searched value) must fit in the kNN bank, when known."""
    from raysl.data.splits import knn_bank_problem, knn_bank_size

    bank = knn_bank_size(base.data, base.eval.bank_limit)
    k = int(knn.extreme("high")) if knn is not None else base.eval.knn_k  # type: ignore[arg-type]
    if problem := knn_bank_problem(k, bank):
        out.add(problem.message, "search.eval.knn_k" if knn is not None else "config.eval.knn_k")


def epoch_metrics(base: Config, params: tuple[Param, ...]) -> list[str]:
    """What the loop reports every epoch in every trial of a study (a term whose weight can
    be searched down to 0 is dropped in some trials, and so is its train/loss/<term>)."""
    always = set(_active(base))
    for end in ("low", "high"):
        with contextlib.suppress(ConfigError):  # reported by _check_extremes
            always &= set(_active(base.override(extreme(base, params, end))))
    ramped = [t for t, v in base.active_terms().items() if v.get("ramp_from") is not None]
    return [
        *EPOCH_METRICS,
        *(f"train/loss/{t}" for t in sorted(always)),
        *(f"train/weight/{t}" for t in ramped),
        *knn_k_metrics(base, params),
    ]


def extreme(base: Config, params: tuple[Param, ...], end: str) -> dict[str, Any]:
    """Every param at its low (or high) end, conditions applied in order."""
    values, chosen = base.to_flat(), {}
    for param in params:
        if param.when is None or param.when.holds(values):
            chosen[param.key] = values[param.key] = param.extreme(end)  # type: ignore[arg-type]
    return chosen


def _check_extremes(base: Config, params: tuple[Param, ...], out: Problems) -> None:
    """Ranges that are fine alone can fail together, e.g. every loss weight 0 at once."""
    for end in ("low", "high"):
        chosen = extreme(base, params, end)
        try:
            base.override(chosen)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
            for problem in exc.problems:
                out.add(
                    f"with every searched key at its {end}est ({shown}): {problem.key}: "
                    f"{problem.message}; narrow the ranges (e.g. keep an anchor term's weight "
                    "fixed > 0)",
                    f"search.{problem.key}" if problem.key in chosen else "search",
                    "search",
                )


def _active(cfg: Config) -> list[str]:
    return [
        name
        for name, term in cfg.active_terms().items()
        if term["weight"] > 0 or (term.get("ramp_from") or 0) > 0
    ]
