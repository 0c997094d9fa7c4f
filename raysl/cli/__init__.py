"""The `raysl` command line: `raysl train`, `raysl data export`, `raysl config`.

Subcommands live in their own modules and are imported only when run, so `raysl --help`
stays fast and `raysl train` never imports Ray.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from raysl.errors import ConfigError


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # name -> (module, attribute, one-line help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attribute, _ = self.lazy[name]
            return getattr(__import__(module, fromlist=[attribute]), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][2]) for name in self.list_commands(ctx) if name in self.lazy]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=_LazyGroup,
    lazy={
        "train": (
            "raysl.cli.train",
            "train",
            "Pretrain an encoder with one config (CPU, GPU or torchrun).",
        ),
        "data": (
            "raysl.cli.data",
            "data",
            "Inspect data sources and export them to Parquet shards.",
        ),
        "config": (
            "raysl.cli.config",
            "config",
            "Print a resolved config as dotted keys, or its errors.",
        ),
        "ui": (
            "raysl.cli.ui",
            "ui",
            "Open the MLflow UI on the study store (parent run per study, child per trial).",
        ),
        "report": (
            "raysl.cli.report",
            "report",
            "Leaderboard of a search space's newest study, from MLflow (table, Parquet, CSV).",
        ),
        "tune": (
            "raysl.cli.tune",
            "tune",
            "Run a hyperparameter study: Ray Tune + Optuna + ASHA, logged to MLflow.",
        ),
        "launch": (
            "raysl.cli.launch",
            "launch",
            "Bring up a Ray cluster (or a KubeRay RayJob) and run a study on it as a Ray Job.",
        ),
        "export": (
            "raysl.cli.export",
            "export",
            "Write a trained encoder (checkpoint or study's best) for `raysl.load_encoder`.",
        ),
        "doctor": (
            "raysl.cli.doctor",
            "doctor",
            "Check a cluster file, and a running cluster node by node, before a study.",
        ),
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="raysl")
def cli() -> None:
    """raysl: search and scale contrastive and self-supervised representation learning.

    One plain-PyTorch training loop runs alone, under torchrun, under Ray Train and as the
    trial of a Ray Tune study. Every config key is a dotted key (optim.lr,
    loss.infonce.temperature) that works in YAML files, in --set and in search spaces.
    """


MAX_PROBLEMS = 20  # problems printed; a file of 40,000 unknown keys is not 40,000 lines


def problems_text(error: ConfigError) -> str:
    """`error: <the problem>`, or a count, the first `MAX_PROBLEMS` and how many more."""
    problems = error.problems
    if len(problems) == 1:
        return f"error: {problems[0]}"
    lines = [f"error: {len(problems):,} problems", *map(str, problems[:MAX_PROBLEMS])]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"… and {len(problems) - MAX_PROBLEMS:,} more problems")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input (config, paths) exits with status 2 and one clear message."""
    try:
        cli.main(args=argv, prog_name="raysl", standalone_mode=False)
    except ConfigError as exc:
        click.echo(problems_text(exc), err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `raysl train` alone: its help
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line, as every refusal: what is wrong, where help is
        command = exc.ctx.command_path if exc.ctx is not None else "raysl"
        click.echo(f"error: {exc.format_message()} (see {command} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
