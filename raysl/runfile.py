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
    if not doc:
        raise ConfigError(
            Problem(
                "the file is empty (or only comments); a run file needs a config: section, "
                "e.g. config: {data: {source: digits}, loss: {infonce: {weight: 1}}} "
                "(see search_spaces/quickstart.yaml)",
                where=where,
            )
        )
    unknown = [key for key in doc if key not in SECTIONS]
    bare = [key for key in unknown if key in Config.model_fields]
    if bare:
        raise ConfigError(
            Problem(
                f"{', '.join(map(str, bare))} {'is a config key' if len(bare) == 1 else 'are config keys'} "
                "at the top level; move these keys under `config:` (indent them below a "
                "`config:` line)",
                key=str(bare[0]),
                where=where,
                line=lines.get(str(bare[0])),
            )
        )
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
    if "name" in doc and (bad := _bad_name(name)):
        raise ConfigError(Problem(bad, key="name", where=where, line=lines.get("name")))
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
    from raysl.data.splits import knn_bank_problem, knn_bank_size

    bank = knn_bank_size(config.data, config.eval.bank_limit)
    from_set = overrides and any(k.startswith("eval.knn_k") for k in overrides)
    if problem := knn_bank_problem(
        config.eval.knn_k,
        bank,
        "--set" if from_set else where,
        None if from_set else lines.get("config.eval.knn_k") or lines.get("config.eval"),
    ):
        raise ConfigError(problem)
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


def run_file_text(name: str, description: str, config: Mapping[str, Any]) -> str:
    """A run file (YAML) for `config` (dotted or nested): nested sections, and `schedule:`
    keyed by dotted keys as a person writes it."""
    import json

    import yaml

    from raysl.yamlio import flatten, unflatten

    flat = json.loads(json.dumps(flatten(config), default=str))  # tuples -> lists
    schedule = {
        k.removeprefix("schedule."): v for k, v in flat.items() if k.startswith("schedule.")
    }
    nested = unflatten({k: v for k, v in flat.items() if not k.startswith("schedule")})
    if schedule:
        nested["schedule"] = schedule
    doc = {"name": name, "description": description, "config": nested}
    return yaml.safe_dump(doc, sort_keys=False, width=100)


def _bad_name(name: str) -> str:
    """Why `name` cannot name a run directory under runs/, or ""."""
    if len(name) > 128:
        return f"must be at most 128 characters (got {len(name)})"
    if "/" in name or "\\" in name or name.startswith(".") or any(ord(c) < 32 for c in name):
        return (
            f"must be a plain name, not a path (got {name!r}): the run goes to runs/<name>; "
            "use letters, digits, _ - . (not first), and --out to write somewhere else"
        )
    return ""


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
