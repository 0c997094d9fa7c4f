"""The checks behind `raysl.config` and the one-line messages its errors become.

Validators (attached to the config models in `raysl.config`): no bool where a number is meant,
a fraction in (0, 1], `eval.knn_k` as one k or a list, a term's ramp in order, at least one
loss term with a weight. `problem` turns one pydantic error into a `Problem` that names the
dotted key, the file and its line, and for an unknown key the closest allowed one.
"""

from __future__ import annotations

import difflib
import numbers
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationInfo

from raysl.errors import Problem, shorten


def numeric(annotation: Any) -> bool:
    """Whether a field takes numbers and no bool (bool is an int subclass to pydantic)."""
    args = typing.get_args(annotation)
    if annotation is bool or bool in args:
        return False
    return annotation in (int, float) or any(map(numeric, args))


def no_bool(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """`epochs: true` is not 1: a bool is refused where the field takes a number."""
    field = cls.model_fields.get(info.field_name or "")
    if isinstance(value, bool) and field is not None and numeric(field.annotation):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def a_fraction(value: Any) -> float:
    """One line that says what a fraction is, for a bool, a string or a value out of range."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not 0 < value <= 1:
        raise ValueError(
            "must be a number in (0, 1], the share of the training split to train on, "
            f"e.g. 0.1 (got {shorten(value)})"
        )
    return float(value)


def one_k_or_a_list(value: Any) -> int | list[int]:
    """One clear line for a bad `knn_k` (the int | list union would report two)."""

    def positive(k: Any) -> bool:
        return isinstance(k, numbers.Integral) and not isinstance(k, bool) and k > 0

    if isinstance(value, (list, tuple)):
        if not value or not all(map(positive, value)) or len(set(value)) != len(value):
            raise ValueError(
                "must be a positive integer or a non-empty list of distinct positive "
                f"integers such as [200, 20] (got {shorten(value)})"
            )
        return [int(k) for k in value]
    if not positive(value):
        raise ValueError(
            "must be a positive integer such as 200, or a list such as [200, 20] "
            f"(got {shorten(value)})"
        )
    return int(value)


def ramp_in_order(self: Any) -> Any:
    """A loss term's weight ramp ends no earlier than it starts."""
    if self.ramp_end < self.ramp_start:
        raise ValueError(f"ramp_end ({self.ramp_end}) must be >= ramp_start ({self.ramp_start})")
    return self


def some_weight(self: Any) -> Any:
    """`loss` has at least one term with a weight (or a ramp towards one) above 0."""
    terms = list(type(self).model_fields)
    active = [
        name
        for name in terms
        if (term := getattr(self, name)) is not None
        and (term.weight > 0 or (term.ramp_from or 0) > 0)
    ]
    if not active:
        raise ValueError(
            f"no loss term has a weight > 0; set e.g. loss.infonce.weight: 1 (terms: {', '.join(terms)})"
        )
    return self


# ---- pydantic errors as problems people can act on ------------------------------------------
def problem(
    error: Mapping[str, Any],
    where: str,
    lines: Mapping[str, int],
    prefix: str,
    root: type[BaseModel],
) -> Problem:
    """One pydantic error of validating `root` as a `Problem` naming the dotted key and line."""
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
    loc = [part for part in loc if not part.startswith(("constrained-", "union[", "nullable["))]
    key = ".".join(loc)
    line = _line_of(prefix + key, lines)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent, _, leaf = key.rpartition(".")
        allowed = allowed_keys(root, parent)
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        place = f"under '{parent}'" if parent else "at the top level"
        what = "loss term" if parent == "loss" else "key"
        return Problem(
            f"unknown {what}; {hint}allowed {place}: {', '.join(allowed)}",
            key=key,
            where=where,
            line=line,
        )
    message = error["msg"]
    if kind.startswith("value_error"):
        message = message.removeprefix("Value error, ")
    elif "input" in error and kind != "missing":
        message = f"{message} (got {shorten(error['input'])})"
    return Problem(message, key=key, where=where, line=line)


def _line_of(key: str, lines: Mapping[str, int]) -> int | None:
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return None


def allowed_keys(root: type[BaseModel], parent: str) -> list[str]:
    """The keys allowed directly under a dotted prefix of `root` ('' = top level)."""
    model: Any = root
    for part in filter(None, parent.split(".")):
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return []
    return list(model.model_fields)
