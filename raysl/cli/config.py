"""`raysl config`: check a config file and print it resolved, as dotted keys."""

from __future__ import annotations

from pathlib import Path

import click

from raysl.runfile import load_run_file, parse_overrides


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a dotted config key (repeatable).",
)
@click.option("--changed", is_flag=True, help="Only the keys that differ from raysl's defaults.")
def config(config_file: Path, overrides: tuple[str, ...], changed: bool) -> None:
    """Validate CONFIG and print every key with its value (defaults filled in).

    The dotted keys printed are the ones --set, search spaces and MLflow params use.
    Exits with status 2 and one line per problem if CONFIG is invalid.
    """
    from rich.console import Console
    from rich.table import Table

    from raysl.config import Config

    run_file = load_run_file(config_file, parse_overrides(overrides))
    flat = run_file.config.to_flat()
    defaults = Config().to_flat()
    table = Table(title=f"{run_file.name} ({config_file})", header_style="bold")
    table.add_column("key")
    table.add_column("value")
    for key, value in flat.items():
        differs = defaults.get(key, object()) != value
        if changed and not differs:
            continue
        table.add_row(key, f"[bold]{value!r}[/]" if differs else repr(value))
    Console(highlight=False).print(table)
