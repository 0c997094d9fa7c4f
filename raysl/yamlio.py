"""YAML reading with line numbers, YAML 1.2 floats and duplicate-key errors."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from raysl.errors import ConfigError, Problem, cut


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


MAX_BYTES = 1 << 20  # run files, search spaces and cluster files are a few kB
MAX_VALUES = 100_000  # values after aliases are expanded (an alias "bomb" stays small on disk)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping and the 1-based line of every dotted key in it.

    The file must be UTF-8 text (a UTF-8 BOM is fine) of at most `MAX_BYTES`; it is parsed once.

    Raises:
        ConfigError: the file is missing, unreadable, too large, binary, compressed, not UTF-8,
            not YAML, not a mapping, repeats a key, or has an alias that contains itself.
    """
    path = Path(path)
    where = str(path)
    text = read_text(path)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            Problem(
                f"the control character #x{exc.character:02x} is not allowed in YAML; remove it",
                where=where,
                line=line,
            )
        ) from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_graph(node, where)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            Problem(f"YAML syntax error: {cut(reason)}; fix the YAML", where=where, line=line)
        ) from None
    finally:
        loader.dispose()
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


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a small input file; one clear ConfigError for anything else."""
    where = str(path)
    if not path.is_file():
        hint = "it is a directory" if path.is_dir() else "no such file"
        raise ConfigError(Problem(f"cannot read the file ({hint}); check the path", where=where))
    try:
        size = path.stat().st_size
        if size > limit:
            raise ConfigError(
                Problem(
                    f"the file is {size / 1e6:.1f} MB, more than the {limit / 1e6:.1f} MB "
                    "allowed for a YAML input file; is it the right file?",
                    where=where,
                )
            )
        data = path.read_bytes()[: limit + 1]
    except OSError as exc:
        raise ConfigError(
            Problem(
                f"cannot read the file ({exc.strerror or exc}); check its permissions", where=where
            )
        ) from None
    if data.startswith(b"\x1f\x8b"):
        why = "it is gzip-compressed; decompress it (gunzip) and pass the .yaml file"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[1:2] == b"\0" or data[:1] == b"\0":
        why = "it is UTF-16 (or another two-byte encoding); save it as UTF-8"
    elif b"\0" in data:
        why = "it is a binary file, not YAML text; pass the .yaml file"
    else:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError(
                Problem(
                    f"not UTF-8 text (byte 0x{data[exc.start]:02x} is not UTF-8; Latin-1?); "
                    "save the file as UTF-8",
                    where=where,
                    line=line,
                )
            ) from None
    raise ConfigError(Problem(f"cannot read the file: {why}", where=where))


def _check_graph(root: yaml.Node, where: str) -> None:
    """No alias may contain itself, and aliases may not expand past `MAX_VALUES` values."""
    count = 0
    stack: list[tuple[yaml.Node, frozenset[int]]] = [(root, frozenset())]
    while stack:
        node, above = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                Problem(
                    f"the file's keys and values expand to more than {MAX_VALUES:,} values "
                    "(aliases *name counted each time they are used; a run file has a few "
                    "hundred); is it the right file? write the values out or use fewer aliases",
                    where=where,
                )
            )
        if not isinstance(node, yaml.CollectionNode):
            continue
        if id(node) in above:
            raise ConfigError(
                Problem(
                    "an alias (*name) refers to the mapping or list that contains it; "
                    "remove the self-reference",
                    where=where,
                    line=node.start_mark.line + 1,
                )
            )
        inner = above | {id(node)}
        children = (
            [part for pair in node.value for part in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        stack.extend((child, inner) for child in children)


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
