"""`raysl train`: one pretraining run on this machine (one process, or one per GPU under torchrun)."""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path

import click
import yaml

from raysl.errors import ConfigError, NonFiniteLossError, Problem
from raysl.runfile import load_run_file, parse_overrides


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a dotted config key, e.g. --set optim.lr=0.1 (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (checkpoints, metrics.jsonl, config.yaml, raysl.log). Default: runs/<name>.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the newest checkpoint in --out (starts fresh if there is none).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Shortcut for --set device=..."
)
@click.option(
    "--quiet", "-q", is_flag=True, help="Only the epoch lines and the summary: no progress bar."
)
def train(
    config_file: Path,
    overrides: tuple[str, ...],
    out: Path | None,
    resume: bool,
    device: str | None,
    quiet: bool,
) -> None:
    """Pretrain an encoder with the config in CONFIG (a run or search-space YAML file).

    \b
    Single process (CPU or one GPU):
      raysl train search_spaces/quickstart.yaml
    Several GPUs or processes on this machine (DDP, negatives from every process):
      torchrun --nproc_per_node 2 -m raysl train CONFIG
    Continue an interrupted run:
      raysl train CONFIG --out runs/NAME --resume

    Each epoch reports the train loss (and each loss term), lr, throughput and
    weighted cosine kNN top-1 on the held-out val split; the end adds test-split
    kNN and an optional linear probe. Only the file's config: section is used.
    """
    flat = parse_overrides(overrides)
    if device:
        flat["device"] = device
    run_file = load_run_file(config_file, flat)
    cfg = run_file.config
    out = out or Path("runs") / run_file.name

    from raysl.checkpoint import latest_checkpoint

    checkpoint_dir = out / "checkpoints"
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None and not resume:
        raise ConfigError(
            Problem(
                f"{out} already holds checkpoints (newest: {latest.name}); pass --resume to continue that run, "
                "or choose another --out to start a new one",
                key="--out",
            )
        )

    # Import the heavy stack only once the input is known to be good.
    from raysl.console import ConsoleReporter
    from raysl.reporting import JsonlReporter, Reporter, Reporters
    from raysl.runtime import Runtime
    from raysl.train import fit

    runtime = Runtime.from_env(cfg.device)
    reporter: Reporter = Reporter()
    created = not out.exists()
    if runtime.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _log_to_file(out / "raysl.log")
        resolved = {"name": run_file.name, "config": cfg.model_dump(exclude_none=True)}
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        live = False if quiet else None
        reporter = Reporters([ConsoleReporter(live=live), JsonlReporter(out / "metrics.jsonl")])
        if resume and latest is None:
            click.echo(f"no checkpoint in {checkpoint_dir}; starting from scratch")
    import torch.distributed as dist

    try:
        fit(
            cfg,
            reporter,
            runtime,
            checkpoint_dir=checkpoint_dir,
            resume_from=latest if resume else None,
            name=run_file.name,
        )
        if dist.is_initialized():
            dist.barrier()  # leave together: gloo may abort if ranks tear down at different times
    except ConfigError:
        # Bad data paths etc. surface once the run starts: leave nothing behind for them.
        if created and runtime.rank == 0 and latest_checkpoint(checkpoint_dir) is None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    except NonFiniteLossError as exc:
        if runtime.rank == 0:
            click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if runtime.rank == 0:
            hint = f"raysl train {config_file} --out {out} --resume"
            click.echo(f"\ninterrupted; continue with: {hint}", err=True)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _log_to_file(path: Path) -> None:
    """Warnings and library logging go to the run's log file, not the terminal."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    for stream_handler in [
        h for h in logging.getLogger("py.warnings").handlers if isinstance(h, logging.StreamHandler)
    ]:
        logging.getLogger("py.warnings").removeHandler(stream_handler)
