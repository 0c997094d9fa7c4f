"""`raysl train`: one pretraining run — alone, under torchrun, or on Ray Train workers."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click

from raysl.errors import ConfigError, NonFiniteLossError, Problem
from raysl.runfile import load_run_file, parse_overrides

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=_SETTINGS)
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
    help="Run directory (checkpoints/, metrics.jsonl, config.yaml, raysl.log). Default: runs/<name>.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the newest checkpoint of this run that loads (starts fresh if there is none).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Shortcut for --set device=..."
)
@click.option(
    "--quiet", "-q", is_flag=True, help="Only the epoch lines and the summary: no progress bar."
)
@click.option(
    "--workers",
    type=int,
    help="Run on N Ray Train workers (DDP). Without it raysl does not start Ray.",
)
@click.option(
    "--gpus-per-worker",
    type=float,
    default=None,
    help="GPUs per Ray worker [default: 1 if this machine has a GPU, else 0].",
)
@click.option(
    "--cpus-per-worker",
    type=float,
    default=1.0,
    show_default=True,
    help="CPUs reserved per Ray worker.",
)
@click.option(
    "--placement",
    default="PACK",
    show_default=True,
    type=click.Choice(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]),
    help="How Ray places workers on nodes.",
)
@click.option(
    "--address",
    help="Ray cluster to join (e.g. auto, ray://head:10001). Default: start a local one.",
)
@click.option(
    "--storage",
    help="Checkpoint storage shared by all nodes: a path or a URI (s3://, gs://, file://). Default: the parent of --out.",
)
@click.option(
    "--max-failures",
    type=int,
    default=0,
    show_default=True,
    help="Worker-group restarts (from the last checkpoint) before the run fails (>= 0).",
)
def train(
    config_file: Path,
    overrides: tuple[str, ...],
    out: Path | None,
    resume: bool,
    device: str | None,
    quiet: bool,
    workers: int | None,
    gpus_per_worker: float | None,
    cpus_per_worker: float,
    placement: str,
    address: str | None,
    storage: str | None,
    max_failures: int,
) -> None:
    """Pretrain an encoder with the config in CONFIG (a run or search-space YAML file).

    \b
    Single process (CPU or one GPU):
      raysl train search_spaces/quickstart.yaml
    Several processes or GPUs on this machine (DDP, negatives from every process):
      torchrun --nproc_per_node 2 -m raysl train CONFIG
    Ray Train workers on this machine or a cluster (checkpoints, restarts on failure):
      raysl train CONFIG --workers 8 --gpus-per-worker 1 --address auto --storage s3://bucket/runs
    Continue an interrupted run:
      raysl train CONFIG --out runs/NAME --resume

    data.batch_size is the global batch: each of N processes takes batch_size / N. Each
    epoch reports the train loss (and each loss term), lr, throughput and weighted cosine
    kNN top-1 on the held-out val split; the end adds test-split kNN and an optional linear
    probe. Only the file's config: section is used.
    """
    flat = parse_overrides(overrides)
    if device:
        flat["device"] = device
    run_file = load_run_file(config_file, flat)
    cfg = run_file.config
    if max_failures < 0:
        raise ConfigError(
            Problem(
                f"must be >= 0 (got {max_failures}): the number of restarts before the run fails",
                key="--max-failures",
            )
        )
    out = out or Path("runs") / run_file.name
    on_ray = workers is not None
    from raysl.outputs import check_output_dir, check_storage

    check_output_dir(out, "--out")  # a file in the way, no permission: before anything starts
    if on_ray:
        storage = storage or str(out.resolve().parent)
        name = out.name
        check_storage(storage)
        if address:
            from raysl.launch.address import check_address

            check_address(address)  # a few seconds, not Ray's endless retries
        existing = _storage_checkpoints(storage, name)
    else:
        from raysl.checkpoint import latest_checkpoint

        latest = latest_checkpoint(out / "checkpoints")
        existing = [latest.name] if latest else []
    if existing and not resume:
        raise ConfigError(
            Problem(
                f"{out} already holds checkpoints (newest: {existing[-1]}); pass --resume to continue that run, "
                "or choose another --out to start a new one",
                key="--out",
            )
        )
    scale = None
    if on_ray:
        from raysl.launch.ray_train import Scale

        if gpus_per_worker is None:
            import torch

            gpus_per_worker = 1.0 if torch.cuda.is_available() and cfg.device != "cpu" else 0.0
        scale = Scale(workers, gpus_per_worker, cpus_per_worker, placement, max_failures)
        scale.check(cfg)  # before anything starts
        if existing:
            from raysl.cli.run_dir import check_storage_resumable

            check_storage_resumable(storage, name, existing[-1], cfg)

    # Import the heavy stack only once the input is known to be good.
    from raysl.cli.run_dir import RunDir, newest_state
    from raysl.reporting import Reporter
    from raysl.runtime import Runtime

    runtime = Runtime() if on_ray else Runtime.from_env(cfg.device)
    state = None
    if existing and not on_ray:  # check the checkpoint before anything is written
        state = newest_state(out, cfg, runtime.rank == 0)
    reporter: Reporter = Reporter()
    run_dir = None
    if runtime.rank == 0:
        resolved = {"name": run_file.name, "config": cfg.model_dump(exclude_none=True)}
        reporter = run_dir = RunDir(out, resolved, live=False if quiet else None)
        if resume and not existing:
            click.echo(f"no checkpoint for {out}; starting from scratch")
    try:
        if scale is not None:
            assert run_dir is not None
            run_dir.create()  # Ray logs there from the start
            _train_on_ray(cfg, out, scale, storage, run_dir, address)
        else:
            _train_here(cfg, out, runtime, reporter, state, run_file.name)
    except ConfigError:
        # Bad data paths etc. found by Ray workers: leave nothing behind for them.
        if run_dir is not None:
            run_dir.remove_if_new()
        raise
    except NonFiniteLossError as exc:
        if runtime.rank == 0:
            click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        from raysl.outputs import disk_full, disk_full_line

        if not disk_full(exc):
            raise
        if runtime.rank == 0:
            click.echo(f"error: {disk_full_line(exc, config_file, out)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if runtime.rank == 0:
            if run_dir is not None and run_dir.inner is None:
                run_dir.remove_if_new()
                click.echo("\ninterrupted before the run started; nothing was written", err=True)
            else:
                hint = f"raysl train {config_file} --out {out} --resume"
                click.echo(f"\ninterrupted; continue with: {hint}", err=True)
        sys.exit(130)


def _train_here(cfg, out: Path, runtime, reporter, state: dict | None, name: str) -> None:
    """One process, or this process's rank under torchrun; `state`: the checkpoint to resume."""
    import torch.distributed as dist

    from raysl.train import fit

    try:
        fit(
            cfg,
            reporter,
            runtime,
            checkpoint_dir=out / "checkpoints",
            resume_from=state,
            name=name,
        )
        if dist.is_initialized():
            dist.barrier()  # leave together: gloo may abort if ranks tear down at different times
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_on_ray(cfg, out: Path, scale, storage: str, reporter, address: str | None) -> None:
    """Ray Train workers; checkpoints in `storage/<out name>/checkpoints/`."""
    from raysl.errors import TrainingFailedError
    from raysl.launch.ray_train import train_on_ray

    try:
        summary = train_on_ray(
            cfg,
            out.name,
            scale,
            storage,
            reporter,
            address,
            log_file=out / "raysl.log",
            workers_file=out / "workers.json",
        )
    except TrainingFailedError as error:
        click.echo(
            f"error: training failed after {scale.max_failures} restart(s): {error}", err=True
        )
        click.echo(
            f"details: {out / 'raysl.log'} and Ray's session logs (/tmp/ray/session_latest/logs)",
            err=True,
        )
        sys.exit(1)
    click.echo(
        f"checkpoints: {storage.rstrip('/')}/{out.name}/checkpoints  (newest: {summary.get('checkpoint', '-')})"
    )


def _storage_checkpoints(storage: str, name: str) -> list[str]:
    """Names of the complete checkpoints of run `name` under `storage` (path or URI)."""
    import pyarrow.fs

    from raysl.checkpoint import PATTERN, STATE

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(
            storage if "://" in storage else str(Path(storage).resolve())
        )
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise ConfigError(
            Problem(
                f"cannot open the storage ({error}); give a path or a s3:// gs:// file:// URI",
                key="--storage",
            )
        ) from None
    base = f"{root.rstrip('/')}/{name}/checkpoints"
    found = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    names = [info.base_name for info in found if PATTERN.match(info.base_name)]
    complete = [
        n for n in names if fs.get_file_info(f"{base}/{n}/{STATE}").type == pyarrow.fs.FileType.File
    ]
    return sorted(complete)


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
