"""The command line as a user meets it: help everywhere, python -m, exit codes."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "command", [[], ["train"], ["data"], ["data", "export"], ["data", "info"], ["config"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: raysl" in proc.stdout


def test_usage_errors_exit_2() -> None:
    assert run_cli("nosuch").returncode == 2
    assert run_cli("train").returncode == 2
