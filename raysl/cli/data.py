"""`raysl data info` and `raysl data export`: look at a source, write it as Parquet shards."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from raysl.config import SOURCES, Config, DataConfig
from raysl.errors import ConfigError, Problem
from raysl.runfile import parse_overrides


@click.group(name="data")
def data() -> None:
    """Inspect data sources and export them to Parquet shards.

    SOURCE is one of: synthetic, digits, fashion_mnist, cifar10, cifar100, stl10,
    imagefolder, parquet. Other data keys go in --set, e.g. --set data.image_size=32.
    """


def _source_options(command: click.Command) -> click.Command:
    """The options `info` and `export` share: --root, --set, --seed."""
    command = click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the val split (and of synthetic images).",
    )(command)
    command = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="data.KEY=VALUE",
        help="Override a data key; repeatable.",
    )(command)
    command = click.option(
        "--root", metavar="DIR", help="Data directory (data.root); default: the source's own."
    )(command)
    return click.argument("source", type=click.Choice(SOURCES))(command)


def data_config(source: str, root: str | None, sets: tuple[str, ...]) -> DataConfig:
    """A validated DataConfig from SOURCE, --root and --set (only data.* keys)."""
    flat = parse_overrides(sets)
    other = [key for key in flat if not key.startswith("data.")]
    if other:
        raise ConfigError(
            Problem(f"only data.* keys can be set here (got {', '.join(other)})", where="--set")
        )
    flat["data.source"] = source
    if root is not None:
        flat["data.root"] = root
    return Config().override(flat).data


@data.command()
@_source_options
def info(source: str, root: str | None, sets: tuple[str, ...], seed: int) -> None:
    """Load SOURCE and print its split sizes, image shape, classes and mean/std."""
    from rich.console import Console
    from rich.table import Table

    from raysl.data import load_splits

    cfg = data_config(source, root, sets)
    start = time.perf_counter()
    splits = load_splits(cfg, seed)
    seconds = time.perf_counter() - start
    table = Table(title=f"{source} ({cfg.root or 'default location'}, seed {seed})")
    for column in ("split", "images", "labelled", "shape (C, H, W)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if part is None:
            table.add_row(name, "-", "-", "-")
            continue
        labelled = int((part.labels >= 0).sum())
        table.add_row(
            name, f"{len(part):,}", f"{labelled:,}", " x ".join(map(str, part.images.shape[1:]))
        )
    console = Console()
    console.print(table)
    console.print(f"classes: {splits.num_classes}")
    console.print(f"mean: ({', '.join(f'{m:.4f}' for m in splits.mean)})")
    console.print(f"std:  ({', '.join(f'{s:.4f}' for s in splits.std)})")
    console.print(f"loaded in {seconds:.2f} s")


@data.command()
@_source_options
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Rows per shard.",
)
@click.option("--force", is_flag=True, help="Overwrite an earlier export in a non-empty OUT_DIR.")
def export(
    source: str,
    root: str | None,
    sets: tuple[str, ...],
    seed: int,
    out_dir: Path,
    shard_size: int,
    force: bool,
) -> None:
    """Write SOURCE's training split (before the val split) and test split to OUT_DIR.

    Shards are OUT_DIR/train/part-00000.parquet, ... with columns image (PNG), label and
    index; read them back with data.source=parquet and data.root=OUT_DIR.
    """
    from raysl.data import export_parquet
    from raysl.outputs import check_output_dir

    cfg = data_config(source, root, sets)
    check_output_dir(out_dir, "OUT_DIR")  # before any image is loaded or shard written
    start = time.perf_counter()

    def report(path: Path, rows: int) -> None:
        click.echo(f"wrote {path} ({rows:,} rows)")

    shards = export_parquet(
        cfg, out_dir, seed=seed, shard_size=shard_size, overwrite=force, on_shard=report
    )
    summary = json.loads((out_dir / "_info.json").read_text())
    counts = summary["counts"]
    size = sum(path.stat().st_size for path in shards) / 2**20
    click.echo(
        f"exported {source}: {counts.get('train', 0):,} train + {counts.get('test', 0):,} test images "
        f"of {'x'.join(map(str, summary['shape']))}, {summary['num_classes']} classes, "
        f"in {len(shards)} shards ({size:.1f} MiB) to {out_dir} in {time.perf_counter() - start:.1f} s"
    )
