"""Run files: a YAML with `name`, `config` and the optional `search`/`tune` sections.

`load_run_file` validates the file (errors name the file, the line and the key) and then
applies `--set` overrides (errors name `--set`), so bad input stops before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysl.config import Config, validate
from raysl.errors import ConfigError, Problem
from raysl.yamlio import parse_value, read_yaml

# ---- run files --------------------------------------------------------------------------
SECTIONS = ("name", "description", "config", "search", "tune")


@dataclass(frozen=True)
class RunFile:
    """A YAML run file: `name`, `config` (a Config), and the optional `search`/`tune` sections."""

    path: Path
    name: str
    description: str
    config: Config
    search: dict[str, Any] | None
    tune: dict[str, Any] | None
    lines: dict[str, int]


def load_run_file(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunFile:
    """Read and validate a run/search-space file, then apply `--set` overrides.

    Raises:
        ConfigError: with one line per problem, each naming the file (or --set), the key
            and the line.
    """
    path = Path(path)
    where = str(path)
    doc, lines = read_yaml(path)
    unknown = [key for key in doc if key not in SECTIONS]
    if unknown:
        raise ConfigError(
            [
                Problem(
                    f"unknown section; allowed: {', '.join(SECTIONS)}",
                    key=key,
                    where=where,
                    line=lines.get(key),
                )
                for key in unknown
            ]
        )
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            Problem("must be a non-empty string", key="name", where=where, line=lines.get("name"))
        )
    raw = doc.get("config") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            Problem(
                "must be a mapping of config sections (data:, model:, loss:, ...)",
                key="config",
                where=where,
                line=lines.get("config"),
            )
        )
    config = validate(raw, where=where, lines=lines, prefix="config.")
    if overrides:
        config = config.override(overrides)
    sections = {}
    for key in ("search", "tune"):
        value = doc.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(
                Problem("must be a mapping", key=key, where=where, line=lines.get(key))
            )
        sections[key] = dict(value) if value is not None else None
    return RunFile(
        path=path,
        name=name,
        description=str(doc.get("description", "")),
        config=config,
        search=sections["search"],
        tune=sections["tune"],
        lines=lines,
    )


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["optim.lr=0.1", "loss.infonce.temperature=0.5"]` -> dotted dict, values typed as YAML."""
    flat: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                Problem(
                    f"expected KEY=VALUE with a dotted key, e.g. optim.lr=0.1 (got {item!r})",
                    where="--set",
                )
            )
        flat[key] = parse_value(value)
    return flat
