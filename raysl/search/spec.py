"""The search-space spec: distributions, conditions, Tune settings, and Optuna sampling.

No Ray here: `SearchSpec.sample` is an Optuna define-by-run function (Ray's `OptunaSearch`
takes it as `space=`), and `SearchSpec.config_for` turns its result into a validated `Config`.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raysl.config import Config
from raysl.yamlio import parse_value

if TYPE_CHECKING:
    import optuna

KINDS = ("uniform", "loguniform", "int", "choice")
OPS = (">", ">=", "<", "<=", "==", "!=", "in")
_ORDER = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_WHEN = re.compile(
    r"^\s*(?P<key>[A-Za-z_][\w]*(?:\.\w+)*)"
    r"(?:\s*(?P<op>>=|<=|==|!=|>|<)|\s+(?P<in>in)\s)\s*(?P<value>\S.*?)\s*$"
)


def freeze(value: Any) -> Any:
    """Lists become tuples (hashable, and equal to what the config holds for tuple fields)."""
    return tuple(freeze(v) for v in value) if isinstance(value, list | tuple) else value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Condition:
    """`when: "loss.supcon.weight > 0"`: sample a param only if this holds.

    `key` is a searched key (sampled earlier) or a base-config key; `value` is read as YAML
    (`0`, `2q`, `null`, `[2q, label]` for `in`).
    """

    key: str
    op: str
    value: Any

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for these dotted values (missing keys read as None)."""
        actual = freeze(values.get(self.key))
        if self.op in _ORDER:
            return is_number(actual) and _ORDER[self.op](actual, self.value)
        if self.op == "in":
            return any(_same(actual, v) for v in self.value)
        return _same(actual, self.value) == (self.op == "==")

    def __str__(self) -> str:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.key} {self.op} {json.dumps(value)}"


def _same(a: Any, b: Any) -> bool:
    # bool and number never match: `flag == 1` is not `flag == true`
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def parse_condition(text: str) -> Condition:
    """`"KEY OP VALUE"` -> Condition. Raises ValueError with the fix on bad syntax."""
    match = _WHEN.match(text) if isinstance(text, str) else None
    op = value = None
    if match is not None:
        op, value = match["op"] or "in", parse_value(match["value"])
    if match is None:
        fix = (
            f'write "KEY OP VALUE" with OP one of {" ".join(OPS)}, e.g. '
            '"loss.supcon.weight > 0" or "loss.mining.band == quantile"'
        )
    elif op in _ORDER and not is_number(value):
        fix = f"'{op}' compares numbers (got {value!r}); write e.g. \"KEY {op} 0\""
    elif op == "in" and not isinstance(value, list):
        fix = f"'in' needs a YAML list (got {value!r}); write e.g. \"KEY in [2q, label]\""
    else:
        return Condition(match["key"], op, freeze(value))  # type: ignore[index, arg-type]
    raise ValueError(f"cannot read the condition {text!r}: {fix}")


@dataclass(frozen=True)
class Param:
    """One searched dotted config key and its distribution."""

    key: str
    kind: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False  # loguniform: always True; int: log-spaced
    step: int | None = None
    choices: tuple[Any, ...] | None = None
    when: Condition | None = None

    def suggest(self, trial: optuna.trial.Trial) -> Any:
        """Ask Optuna for a value; the parameter name is the dotted key."""
        if self.kind == "choice":
            assert self.choices is not None
            if not any(isinstance(c, tuple) for c in self.choices):
                return trial.suggest_categorical(self.key, list(self.choices))
            # Optuna's categoricals are scalars: lists (e.g. SelfCon exits) go by their label
            labels = {choice_label(c): c for c in self.choices}
            return list(labels[trial.suggest_categorical(self.key, list(labels))])
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=self.step or 1, log=self.log
            )
        return trial.suggest_float(
            self.key, float(self.low), float(self.high), log=self.kind == "loguniform"
        )

    def optuna_value(self, value: Any) -> Any:
        """`value` as Optuna holds this param (list choices by their label), for enqueueing."""
        if self.kind == "choice" and any(isinstance(c, tuple) for c in self.choices or ()):
            return choice_label(freeze(value))
        return int(value) if self.kind == "int" else value

    def extreme(self, end: Literal["low", "high"]) -> Any:
        """The lowest/highest value (first/last choice when choices are not all numbers)."""
        if self.kind != "choice":
            value = self.low if end == "low" else self.high
            return int(value) if self.kind == "int" else value  # type: ignore[arg-type]
        assert self.choices is not None
        choices = list(self.choices)
        if all(is_number(c) for c in choices):
            choices.sort()
        value = choices[0] if end == "low" else choices[-1]
        return list(value) if isinstance(value, tuple) else value

    def describe(self) -> str:
        if self.kind == "choice":
            body = f"choice {[choice_label(c) for c in self.choices or ()]}"
        else:
            body = f"{self.kind} [{self.low}, {self.high}]" + (" log" if self.log else "")
            body += f" step {self.step}" if self.step else ""
        return body + (f" when {self.when}" if self.when else "")


def choice_label(value: Any) -> str:
    """How a choice appears to Optuna when a choice is a list: `[2, 3]`, `fc`, `0.5`."""
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Resources:
    """Per Ray Train worker (one worker = the trial itself): a trial reserves workers x cpu CPUs
    and workers x gpu GPUs. gpu 0.5 with one worker packs two trials per GPU."""

    cpu: float = 1.0
    gpu: float = 0.0
    workers: int = 1


@dataclass(frozen=True)
class Asha:
    """ASHA in epochs (one Tune report per epoch); max_t is the config's epochs."""

    grace_period: int = 1
    reduction_factor: int = 3


@dataclass(frozen=True)
class Pbt:
    """Population Based Training (Jaderberg et al., 2017, arXiv:1711.09846) in epochs: every
    `interval` epochs each trial in the bottom `quantile` continues from the checkpoint of one
    in the top `quantile`, with each `mutate` key resampled from its search range (probability
    `resample`) or multiplied by 0.8 or 1.2 (choices: the neighbouring choice)."""

    interval: int = 2
    quantile: float = 0.25
    resample: float = 0.25
    mutate: tuple[str, ...] = ()
    # synchronous: every trial reaches the interval before the bottom ones exploit (results do
    # not depend on which trial happens to report first); false: Ray's asynchronous PBT
    synch: bool = True


@dataclass(frozen=True)
class Finalists:
    """`tune.finalists: {top: K, seeds: S, baseline: true}`: after the search, the K best
    full-budget trials are re-run with S other seeds (the trial's seed + 1 ... + S); ranked by
    the mean over the S + 1 runs (the original counts as one seed). With `baseline` (the
    default) the baseline trial is re-run with the same seeds too (if it ran its full budget),
    so the gain over it compares a mean with a mean, not with one seed."""

    top: int = 3
    seeds: int = 2
    baseline: bool = True


@dataclass(frozen=True)
class TuneSettings:
    # the objective; in a multi-objective study the first of `objectives`
    metric: str = "val/knn_top1"
    mode: Literal["max", "min"] = "max"
    num_samples: int = 8
    max_concurrent: int | None = None  # None = auto: what the cluster's resources allow
    resources: Resources = Resources()
    scheduler: Asha | Pbt | None = Asha()
    seed: int = 0
    time_budget_s: float | None = None  # stop starting new trials after this many seconds
    startup_trials: int = 4  # random trials before TPE takes over
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna's sampler; random: the search's baseline
    # retries of a failed trial (e.g. its spot node was reclaimed), each from the trial's last
    # checkpoint; any error is retried, a diverged loss too (it will diverge again: keep it small)
    max_failures: int = 0
    # the best encoder, at the end of a completed study, as a new version of this MLflow
    # registered model (None: logged as the parent run's model `encoder` only)
    register: str | None = None
    # the base config's values of the searched keys as the first trial (Optuna trial 0)
    baseline: bool = True
    finalists: Finalists | None = None
    # ((metric, mode), ...) of a multi-objective study (`metric: [a, b]`); () = one objective
    objectives: tuple[tuple[str, str], ...] = ()

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def goals(self) -> tuple[tuple[str, str], ...]:
        """Every objective as (metric, mode): `objectives`, or the one (metric, mode)."""
        return self.objectives or ((self.metric, self.mode),)


@dataclass(frozen=True)
class SearchSpec:
    """A loaded study: the base config (`tune.config` and `--set` applied), the searched
    params in dependency order, and the Tune settings. No params = a plain run.

    `notes` lists what loading changed on its own (e.g. `eval.every` set to 1), for the CLI
    to print.
    """

    name: str
    path: Path
    base: Config
    params: tuple[Param, ...]
    tune: TuneSettings
    notes: tuple[str, ...] = field(default=())

    def sample(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """Optuna define-by-run: suggest every param in dependency order, skipping params whose
        `when` fails (they keep the base config's value); returns the sampled {dotted key: value}."""
        values = self.base.to_flat()
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.when is not None and not param.when.holds(values):
                continue
            sampled[param.key] = values[param.key] = param.suggest(trial)
        return sampled

    def baseline(self) -> dict[str, Any]:
        """The baseline trial: every searched key at its base-config value, conditions applied
        as `sample` applies them (a key whose `when` fails at the base values is left out)."""
        values = self.base.to_flat()
        return {key: values.get(key) for key in self.searched_in(values)}

    def searched_in(self, values: Mapping[str, Any]) -> list[str]:
        """The keys a trial with these dotted values searched: every param whose `when` holds."""
        return [p.key for p in self.params if p.when is None or p.when.holds(values)]

    def config_for(self, params: Mapping[str, Any]) -> Config:
        """The trial's config: the base with the sampled values applied, validated."""
        return self.base.override(dict(params), where=f"{self.path} (trial parameters)")
