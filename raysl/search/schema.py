"""The config schema as dotted keys: which keys are leaves, and the nearest ones to a typo."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

from raysl.config import Config


def _submodel(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def config_leaves(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the config schema (all loss terms included)."""
    keys = []
    for name, info in model.model_fields.items():
        sub = _submodel(info.annotation)
        keys.extend(config_leaves(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"])
    return keys


def config_key_problem(key: str) -> str | None:
    """None if `key` is a config leaf, else what is wrong and the nearest keys."""
    model: type[BaseModel] | None = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if model is None:
            return f"'{parent}' is a value, not a section: search '{parent}' itself"
        fields = list(model.model_fields)
        if part not in fields:
            near = [
                f"{parent}.{c}" if parent else c
                for c in difflib.get_close_matches(part, fields, n=1)
            ]
            near = near or difflib.get_close_matches(key, config_leaves(), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            what = "loss term" if parent == "loss" else "key"
            place = f"under '{parent}'" if parent else "at the top level"
            return f"not a config key: unknown {what} '{part}'; {hint}allowed {place}: {', '.join(fields)}"
        model = _submodel(model.model_fields[part].annotation)
    if model is not None:
        leaves = config_leaves(model, key + ".")
        return (
            f"'{key}' is a config section, not a value; did you mean one of its keys: "
            f"{', '.join(leaves[:8])}{', ...' if len(leaves) > 8 else ''}?"
        )
    return None


def leaf_type(key: str) -> Any:
    """The leaf's Python type with Annotated/Optional stripped (`int` for model.width)."""
    model: Any = Config
    info = None
    for part in key.split("."):
        info = model.model_fields[part]
        model = _submodel(info.annotation)
    annotation = info.annotation if info else None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation
