"""The `tune:` section: metric, trials, concurrency, resources, scheduler (checked alone;
what needs the config too is checked in `raysl.search.load`)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from raysl.search.problems import Problems, is_int
from raysl.search.spec import Asha, Pbt, Resources, TuneSettings, is_number
from raysl.search.study_options import parse_baseline, parse_finalists, parse_objectives

TUNE_KEYS = (
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "resources",
    "scheduler",
    "seed",
    "time_budget_s",
    "startup_trials",
    "sampler",
    "max_failures",
    "register",
    "baseline",
    "finalists",
    "config",  # base-config overrides for the study's trials (read by load_search_spec)
)
RESOURCE_KEYS = ("cpu", "gpu", "workers")
ASHA_KEYS = ("grace_period", "reduction_factor")
PBT_KEYS = ("interval", "quantile", "resample", "mutate", "synch")
SCHEDULERS = ("asha", "pbt", "none")
SAMPLERS = ("tpe", "random")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # safe in models:/NAME/VERSION


def parse_tune(raw: Mapping[str, Any], out: Problems) -> TuneSettings:
    out.unknown_keys(raw, TUNE_KEYS, "tune")
    d = TuneSettings()
    metric, mode, objectives = parse_objectives(raw, out)
    concurrent = raw.get("max_concurrent", "auto")
    if (
        concurrent is not None
        and concurrent != "auto"
        and not (is_int(concurrent) and concurrent >= 1)
    ):
        out.add(f"must be auto or an integer >= 1 (got {concurrent!r})", "tune.max_concurrent")
        concurrent = None
    budget = raw.get("time_budget_s", d.time_budget_s)
    if budget is not None and not (is_number(budget) and budget > 0):
        out.add(f"must be null or seconds > 0 (got {budget!r})", "tune.time_budget_s")
        budget = None
    register = raw.get("register")
    if register is not None and not (isinstance(register, str) and _MODEL_NAME.match(register)):
        out.add(
            "must be null or a registered-model name of letters, digits, '.', '_' and '-' "
            f"(at most 100, e.g. quickstart-encoder; got {register!r})",
            "tune.register",
        )
        register = None
    return TuneSettings(
        register=register,
        metric=metric,
        mode=mode,
        num_samples=out.integer(
            raw, "num_samples", "tune", d.num_samples, 1, ", the trials to run"
        ),
        max_concurrent=None if concurrent in (None, "auto") else concurrent,
        resources=parse_resources(raw.get("resources"), out),
        # several objectives: no scheduler unless one is named (then refused in
        # raysl.search.study_options)
        scheduler=parse_scheduler(
            raw.get("scheduler", None if len(objectives) > 1 else d.scheduler), out
        ),
        seed=out.integer(raw, "seed", "tune", d.seed),
        time_budget_s=None if budget is None else float(budget),
        startup_trials=out.integer(raw, "startup_trials", "tune", d.startup_trials, 0),
        sampler=parse_sampler(raw.get("sampler", d.sampler), out),
        max_failures=out.integer(
            raw, "max_failures", "tune", d.max_failures, 0, ", retries of a failed trial"
        ),
        baseline=parse_baseline(raw, out),
        finalists=parse_finalists(raw.get("finalists"), out),
        objectives=objectives,
    )


def parse_sampler(raw: Any, out: Problems) -> str:
    """`tpe` (default) or `random` (Optuna's seeded RandomSampler: the search's baseline)."""
    if raw in SAMPLERS:
        return raw
    out.add(f"must be tpe or random, Optuna's sampler (got {raw!r})", "tune.sampler")
    return "tpe"


def parse_resources(raw: Any, out: Problems) -> Resources:
    """Per worker: cpu > 0, gpu >= 0 (<= 1: a worker drives one GPU), workers >= 1."""
    at, d = "tune.resources", Resources()
    if raw is None:
        return d
    if not isinstance(raw, Mapping):
        out.add(f"must be a mapping such as {{cpu: 1, gpu: 0, workers: 1}} (got {raw!r})", at)
        return d
    out.unknown_keys(raw, RESOURCE_KEYS, at)
    cpu, gpu = raw.get("cpu", d.cpu), raw.get("gpu", d.gpu)
    if not (is_number(cpu) and cpu > 0):
        out.add(f"must be a number of CPUs > 0, per worker (got {cpu!r})", f"{at}.cpu")
        cpu = d.cpu
    if not (is_number(gpu) and gpu >= 0):
        out.add(f"must be a number of GPUs >= 0, per worker (got {gpu!r})", f"{at}.gpu")
        gpu = d.gpu
    workers = out.integer(raw, "workers", at, d.workers, 1, ", Ray Train workers per trial")
    if workers > 1 and cpu < 1:
        out.add(
            f"each of the {workers} Ray Train workers needs at least 1 CPU (cpu is per worker; "
            f"got {cpu:g}): set cpu: 1",
            f"{at}.cpu",
        )
    if gpu > 1:
        out.add(
            f"gpu is per worker and a worker drives one GPU (got {gpu:g}): for {math.ceil(gpu)} "
            f"GPUs per trial set gpu: 1, workers: {math.ceil(gpu) * workers}",
            f"{at}.gpu",
        )
    elif workers > 1 and 0 < gpu < 1:
        out.add(
            f"the {workers} workers of one trial cannot share a GPU (NCCL needs one GPU per "
            f"rank; got gpu: {gpu:g}): set gpu: 1, or workers: 1 to pack trials",
            f"{at}.gpu",
        )
    return Resources(cpu=float(cpu), gpu=float(gpu), workers=workers)


def parse_scheduler(raw: Any, out: Problems) -> Asha | Pbt | None:
    """`none`/null, `asha`, `{asha: {grace_period, reduction_factor}}` (in epochs), or
    `{pbt: {interval, quantile, resample, mutate}}` (what needs the config: `raysl.search.pbt`)."""
    at = "tune.scheduler"
    if raw is None or raw == "none":
        return None
    if isinstance(raw, Asha | Pbt):
        return raw
    if raw == "asha":
        return Asha()
    if not (isinstance(raw, Mapping) and len(raw) == 1):
        out.add(
            f"must be none or {{asha: {{grace_period: 2, reduction_factor: 3}}}} (got {raw!r})", at
        )
        return None
    ((name, body),) = raw.items()
    if name not in SCHEDULERS:
        close = difflib.get_close_matches(str(name), SCHEDULERS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        out.add(f"unknown scheduler '{name}'; {hint}allowed: asha, pbt, none", f"{at}.{name}", at)
        return None
    if name == "none":
        return None
    if name == "pbt":
        return parse_pbt(body, out)
    body = body or {}
    if not isinstance(body, Mapping):
        out.add(
            f"takes a mapping {{grace_period: 2, reduction_factor: 3}} (got {body!r})", f"{at}.asha"
        )
        return None
    out.unknown_keys(body, ASHA_KEYS, f"{at}.asha")
    d = Asha()
    return Asha(
        grace_period=out.integer(
            body,
            "grace_period",
            f"{at}.asha",
            d.grace_period,
            1,
            ", the epochs before a first stop",
        ),
        reduction_factor=out.integer(
            body,
            "reduction_factor",
            f"{at}.asha",
            d.reduction_factor,
            2,
            ": ASHA keeps 1/reduction_factor of the trials at each rung",
        ),
    )


def parse_pbt(body: Any, out: Problems) -> Pbt | None:
    """`{pbt: {interval: 2, quantile: 0.25, resample: 0.25, mutate: [KEYS]}}` alone."""
    at = "tune.scheduler.pbt"
    example = "{interval: 2, quantile: 0.25, resample: 0.25, mutate: [optim.lr, loss.icc.weight]}"
    if not isinstance(body, Mapping):
        out.add(f"takes a mapping {example} (got {body!r})", at)
        return None
    out.unknown_keys(body, PBT_KEYS, at)
    d = Pbt()
    interval = out.integer(body, "interval", at, d.interval, 1, ", epochs between exploits")
    fractions = {}
    for key, lo, hi, what in (
        ("quantile", 0, 0.5, "the share of trials that exploit (and that are exploited)"),
        ("resample", 0, 1, "the probability of resampling a key instead of scaling it"),
    ):
        value = body.get(key, getattr(d, key))
        ok = is_number(value) and lo <= value <= hi and (key != "quantile" or value > 0)
        if not ok:
            bounds = "(0, 0.5]" if key == "quantile" else "[0, 1]"
            out.add(f"must be a number in {bounds}, {what} (got {value!r})", f"{at}.{key}")
            value = getattr(d, key)
        fractions[key] = float(value)
    mutate = body.get("mutate")
    if not (isinstance(mutate, list) and mutate and all(isinstance(k, str) for k in mutate)) or len(
        set(mutate)
    ) != len(mutate):
        out.add(
            "must list the searched keys PBT changes during training, each once, e.g. "
            f"[optim.lr, loss.icc.weight] (got {mutate!r})",
            f"{at}.mutate",
        )
        mutate = []
    synch = body.get("synch", d.synch)
    if not isinstance(synch, bool):
        out.add(f"must be true or false (got {synch!r})", f"{at}.synch")
        synch = d.synch
    return Pbt(interval=interval, mutate=tuple(mutate), synch=synch, **fractions)
