"""YAML reading with line numbers, YAML 1.2 floats and duplicate-key errors."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from raysl.errors import ConfigError, Problem


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (PyYAML follows YAML 1.1 and reads a string)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_value(text: str) -> Any:
    """Type a command-line value the way YAML would (`0.1` -> float, `[1, 2]` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping and the 1-based line of every dotted key in it.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, not a mapping, or repeats a key.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        hint = "it is a directory" if path.is_dir() else "no such file"
        raise ConfigError(Problem(f"cannot read the file ({hint}); check the path", where=where))
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            Problem(f"YAML syntax error: {reason}; fix the YAML", where=where, line=line)
        ) from None
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            Problem(
                "the file must be a YAML mapping of sections (name:, config:, ...)",
                where=where,
                line=1,
            )
        )
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    for key, line, duplicate in _walk(node, ""):
        if duplicate:
            problems.append(Problem("key appears twice; keep one", key=key, where=where, line=line))
        lines.setdefault(key, line)
    if problems:
        raise ConfigError(problems)
    return dict(data), lines


def _walk(node: yaml.Node, prefix: str) -> Iterator[tuple[str, int, bool]]:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        yield key, key_node.start_mark.line + 1, key in seen
        seen.add(key)
        yield from _walk(value_node, key + ".")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`. Lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`; a later key overrides an earlier one."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
