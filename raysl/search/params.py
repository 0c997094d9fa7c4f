"""The `search:` section: one distribution per dotted config key, checked against the config."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from raysl.config import Config
from raysl.errors import ConfigError
from raysl.search.problems import Problems, is_int
from raysl.search.schema import config_key_problem, config_leaves, leaf_type
from raysl.search.spec import (
    KINDS,
    Condition,
    Param,
    choice_label,
    freeze,
    is_number,
    parse_condition,
)

SPEC_KEYS = (*KINDS, "log", "step", "when")
EXAMPLE = "{loguniform: [0.05, 1.0]}, {int: [8, 32]} or {choice: [0.0, 0.5]}"
_SCALAR = (type(None), bool, int, float, str)


class _Bad(Exception):
    """One problem with a distribution; `sub` is the spec key it is on ("when", "step")."""

    def __init__(self, message: str, sub: str = "") -> None:
        super().__init__(message)
        self.sub = sub


def parse_params(
    search: Mapping[str, Any], base: Config, out: Problems, fixed: Mapping[str, Any]
) -> list[Param]:
    """The params of `search:` in file order; keys in `fixed` (set with --set) are skipped."""
    params = []
    for key, spec in search.items():
        if key in fixed:
            continue
        at = f"search.{key}"
        try:
            param = parse_param(str(key), spec)
            check_values(param, base)
        except _Bad as bad:
            out.add(str(bad), f"{at}.{bad.sub}" if bad.sub else at, at)
            continue
        params.append(param)
    return params


def parse_param(key: str, spec: Any) -> Param:
    problem = config_key_problem(key)
    if problem:
        raise _Bad(problem)
    if not isinstance(spec, Mapping):
        raise _Bad(f"must be a mapping with one distribution, e.g. {EXAMPLE} (got {spec!r})")
    for sub in spec:
        if sub not in SPEC_KEYS:
            close = difflib.get_close_matches(str(sub), SPEC_KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise _Bad(
                f"unknown distribution '{sub}'; {hint}allowed: one of {', '.join(KINDS)}, "
                "plus log and step (int) and when",
                str(sub),
            )
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        raise _Bad(
            f"needs exactly one distribution of {', '.join(KINDS)} (got {found}): e.g. {EXAMPLE}"
        )
    when = None
    if "when" in spec:
        try:
            when = parse_condition(spec["when"])
        except ValueError as exc:
            raise _Bad(str(exc), "when") from None
    if kinds[0] == "choice":
        return _choice(key, spec, when)
    return _range(key, kinds[0], spec, when)


def _range(key: str, kind: str, spec: Mapping[str, Any], when: Condition | None) -> Param:
    bounds = spec[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(is_number, bounds))):
        raise _Bad(
            f"{kind} takes [low, high], two numbers (got {bounds!r}), e.g. {{{kind}: [0.1, 1.0]}}"
        )
    low, high = bounds
    for sub in ("log", "step"):
        if sub in spec and kind != "int":
            fix = "use loguniform" if sub == "log" else "use int with a step, or choice"
            raise _Bad(f"'{sub}' applies to int only; {fix}", sub)
    if not all(map(math.isfinite, bounds)):
        raise _Bad(f"bounds must be finite (got {bounds!r})")
    if low > high:
        raise _Bad(f"low {low} > high {high}: write [{high}, {low}]")
    if low == high:
        raise _Bad(f"low == high ({low}) is a constant: set it under config: instead")
    if kind == "loguniform" and low <= 0:
        raise _Bad(
            f"loguniform needs low > 0 (got {low}): use uniform, or a low such as {high / 100:g}"
        )
    if kind != "int":
        log = kind == "loguniform"
        return Param(key, kind, low=float(low), high=float(high), log=log, when=when)  # type: ignore[arg-type]
    if not all(float(b).is_integer() for b in bounds):
        raise _Bad(f"int bounds must be integers (got {bounds!r}); use uniform for real values")
    low, high = int(low), int(high)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise _Bad(f"log must be true or false (got {log!r})", "log")
    if log and low < 1:
        raise _Bad(f"int with log needs low >= 1 (got {low})")
    if step is not None:
        if not (is_int(step) and step >= 1):
            raise _Bad(f"step must be an integer >= 1 (got {step!r})", "step")
        if log and step != 1:
            raise _Bad("log and a step > 1 cannot be combined (Optuna): drop one", "step")
        if (high - low) % step:
            raise _Bad(f"high - low ({high - low}) must be a multiple of step {step}", "step")
    return Param(key, "int", low=low, high=high, log=log, step=step, when=when)


def _choice(key: str, spec: Mapping[str, Any], when: Condition | None) -> Param:
    choices = spec["choice"]
    for sub in ("log", "step"):
        if sub in spec:
            raise _Bad(f"'{sub}' applies to int only", sub)
    if not isinstance(choices, list) or not choices:
        raise _Bad(
            f"choice takes a non-empty list, e.g. {{choice: [0.0, 0.5, 1.0]}} (got {choices!r})"
        )
    for choice in choices:
        if not (
            isinstance(choice, _SCALAR)
            or (isinstance(choice, list) and all(isinstance(c, _SCALAR) for c in choice))
        ):
            raise _Bad(
                f"choices are numbers, strings, booleans, null or lists of them (got {choice!r})"
            )
    labels = [(type(c).__name__, choice_label(freeze(c))) for c in choices]
    if len(set(labels)) != len(labels):
        raise _Bad(f"a value is listed twice in {choices!r}: list each once")
    if len(choices) == 1:
        raise _Bad(
            f"a choice of one value ({choices[0]!r}) is a constant: set it under config: instead"
        )
    return Param(key, "choice", choices=tuple(freeze(c) for c in choices), when=when)


def check_values(param: Param, base: Config) -> None:
    """Both ends of a range and every choice must be values the config key accepts."""
    if param.kind in ("uniform", "loguniform") and leaf_type(param.key) is int:
        raise _Bad(f"{param.key} takes integers: use {{int: [{param.low:g}, {param.high:g}]}}")
    term = param.key.split(".")[1] if param.key.startswith("loss.") else None
    if term and getattr(base.loss, term) is None:
        raise _Bad(
            f"loss term '{term}' is not in the base config (its weight would default to 1): "
            f"add loss.{term}: {{weight: ...}} under config:"
        )
    if param.kind == "choice":
        candidates = [("choice", c) for c in param.choices or ()]
    else:
        candidates = [("low", param.extreme("low")), ("high", param.extreme("high"))]
    wrong = []
    for which, value in candidates:
        value = list(value) if isinstance(value, tuple) else value
        try:
            base.override({param.key: value})
        except ConfigError as exc:
            wrong += [
                f"{which} {value!r}: {p.message}"
                for p in exc.problems
                if p.key == param.key or p.key.startswith(param.key + ".")
            ]
    if wrong:
        raise _Bad(
            f"not a value {param.key} accepts: {'; '.join(wrong)}; keep inside what it takes"
        )


def order(params: list[Param], out: Problems) -> tuple[Param, ...]:
    """Params in file order, each after the searched key its `when` reads; cycles are errors."""
    searched = {p.key for p in params}
    for p in params:
        if p.when is not None and p.when.key not in searched and config_key_problem(p.when.key):
            near = difflib.get_close_matches(p.when.key, [*searched, *config_leaves()], n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            out.add(
                f"when: '{p.when.key}' is neither a searched key nor a config key; {hint}"
                "a condition reads a key searched here or a key of the config",
                f"search.{p.key}.when",
                f"search.{p.key}",
            )
    deps = {p.key: p.when.key for p in params if p.when is not None and p.when.key in searched}
    done: list[Param] = []
    left = list(params)
    while True:
        placed = {p.key for p in done}
        ready = next((p for p in left if deps.get(p.key, "") in ("", *placed)), None)
        if ready is None:
            break
        done.append(ready)
        left.remove(ready)
    reported: set[str] = set()
    for p in left:  # every key left reads a key left: follow the chain to its cycle
        chain = [p.key]
        while deps[chain[-1]] not in chain:
            chain.append(deps[chain[-1]])
        cycle = chain[chain.index(deps[chain[-1]]) :]
        if p.key in cycle and p.key not in reported:
            reported.update(cycle)
            out.add(
                f"conditional cycle: {' -> '.join([*cycle, cycle[0]])} (each `when` reads the "
                "next key); a `when` may only read a key that does not depend on it: remove one",
                f"search.{p.key}.when",
                f"search.{p.key}",
            )
    return tuple(done)
