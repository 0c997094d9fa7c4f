"""The checks behind `raysl.config` and the one-line messages its errors become.

Validators (attached to the config models in `raysl.config`): no bool where a number is meant,
a fraction in (0, 1], a `data.root` the filesystem can hold, `eval.knn_k` as one k or a list, a
term's ramp in order, at least one loss term with a weight; and `run_problems`, what the active
loss terms need from the rest of the config (views, bank sizes, stages), run by `validate`. `problem` turns one pydantic error into a `Problem` that names the
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


PATH_MAX, NAME_MAX = 4096, 255  # bytes: Linux's limits on a path and on one of its names


def a_path(value: str | None) -> str | None:
    """`data.root`: a path the filesystem can open (refused here, not as `File name too long`
    once the data loads)."""
    if value is None:
        return None
    data = value.encode("utf-8", "surrogateescape")
    if not value.strip() or "\0" in value:
        raise ValueError(f"must be a directory path (got {shorten(value)})")
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in value.split("/"))
    if len(data) > PATH_MAX or longest > NAME_MAX:
        raise ValueError(
            f"is {len(data):,} bytes with a name of {longest:,}; a path holds at most "
            f"{PATH_MAX:,} bytes and each name {NAME_MAX}, so no file can be there; give the "
            f"data directory (got {shorten(value, 60)})"
        )
    return value


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


# ---- checks across sections: what the loss terms need from the run -------------------------
# Stages of each backbone (`raysl.models.backbones`: the ConvNet's 4 widths, ResNets' layer1-4);
# tests/test_hostile_input_more.py checks them against the built backbones.
BACKBONE_STAGES = {"convnet": 4, "resnet18": 4, "resnet34": 4, "resnet50": 4}


def run_problems(
    cfg: Any, where: str = "", lines: Mapping[str, int] | None = None, prefix: str = ""
) -> list[Problem]:
    """A problem for each active loss term that cannot learn with the rest of `cfg` (a
    `raysl.config.Config`): too few views, a k larger than its bank, an exit after the last
    stage, an empty quantile band; each term declares its needs (`LossTerm.run_problems`).
    Each names its dotted key, `where` and the line in `lines` (keys under `prefix`)."""
    from raysl.losses import LOSSES
    from raysl.losses.base import RunShape

    run = RunShape(
        views=cfg.augment.views,
        batch_size=cfg.data.batch_size,
        epochs=cfg.epochs,
        stages=BACKBONE_STAGES.get(cfg.model.backbone, 4),
    )
    found: list[tuple[str, str]] = []
    for name, args in cfg.active_terms().items():
        if args.get("weight", 0) > 0 or (args.get("ramp_from") or 0) > 0:
            found += LOSSES[name].run_problems(name, args, run)
    return [
        Problem(message, key=key, where=where, line=_line_of(prefix + key, lines or {}))
        for key, message in found
    ]
