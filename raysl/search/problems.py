"""Collect the problems of a study file, each at its file line (or `--set`), raise them together."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from raysl.errors import ConfigError, Problem


class Problems:
    """Problems found in one file; `at` is the dotted key in the file ("search.optim.lr")."""

    def __init__(self, where: str, lines: Mapping[str, int], from_set: Iterable[str] = ()) -> None:
        self.where = where
        self.lines = lines
        self.from_set = tuple(from_set)  # `tune.*` keys given with --set
        self.found: list[Problem] = []

    def add(self, message: str, at: str, key: str | None = None) -> None:
        """One problem: `message` says what is wrong and the fix; `key` defaults to `at`."""
        if any(k == at or at.startswith(k + ".") or k.startswith(at + ".") for k in self.from_set):
            self.found.append(Problem(message, key or at, "--set"))
            return
        line, probe = None, at
        while probe and line is None:
            line = self.lines.get(probe)
            probe = probe.rpartition(".")[0]
        self.found.append(Problem(message, key or at, self.where, line))

    def raise_if_any(self) -> None:
        if self.found:
            found, self.found = self.found, []
            raise ConfigError(found)

    def unknown_keys(self, raw: Mapping[str, Any], allowed: tuple[str, ...], at: str) -> None:
        for key in raw:
            if key not in allowed:
                close = nearest(str(key), allowed)
                hint = f"did you mean '{close}'? " if close else ""
                self.add(
                    f"unknown key; {hint}allowed under {at}: {', '.join(allowed)}", f"{at}.{key}"
                )

    def integer(
        self,
        raw: Mapping[str, Any],
        key: str,
        at: str,
        default: int,
        minimum: int | None = None,
        why: str = "",
    ) -> int:
        """`raw[key]` if it is an integer >= minimum (bools are not), else a problem."""
        value = raw.get(key, default)
        if is_int(value) and (minimum is None or value >= minimum):
            return value
        need = f"an integer >= {minimum}" if minimum is not None else "an integer"
        self.add(f"must be {need}{why} (got {value!r})", f"{at}.{key}")
        return default


def nearest(word: str, options: Iterable[str]) -> str | None:
    """The closest option to a typo (`grace` -> `grace_period`), or None."""
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    prefixed = [o for o in options if o.startswith(word) or word.startswith(o)]
    return close[0] if close else (prefixed[0] if len(prefixed) == 1 else None)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
