"""User-facing errors: one clear message that names the file, the key and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SHOWN = 80  # characters of a value shown in a message
_LONGEST = 1000  # characters of one problem's message (a pasted megabyte stays off the screen)


def shorten(value: Any, limit: int = SHOWN) -> str:
    """`repr(value)` cut to `limit` characters, saying how long it was."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = SHOWN) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


@dataclass(frozen=True)
class Problem:
    """One problem in a user's input.

    Args:
        message: what is wrong and what is allowed, e.g. "must be > 0 (got -0.1)".
        key: the dotted key, e.g. "optim.lr"; empty for the whole file.
        where: the file (or "--set") the value came from.
        line: 1-based line in `where`, when known.
    """

    message: str
    key: str = ""
    where: str = ""
    line: int | None = None

    def __str__(self) -> str:
        place = cut(self.where, 200) + (f":{self.line}" if self.line else "")  # a pasted path
        head = ": ".join(part for part in (place, self.key) if part)
        message = self.message
        if len(message) > _LONGEST:
            message = f"{message[: _LONGEST - 1]}…"
        return f"{head}: {message}" if head else message


class ConfigError(ValueError):
    """Bad input (config, search space, cluster file, data path). The CLI exits with status 2."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped instead of continuing silently."""


class TrainingFailedError(RuntimeError):
    """A distributed run failed more often than its restarts allow; the cause is chained."""
