"""Ray Train: the unchanged `fit()` on N workers, checkpoints in shared storage, restarts on failure.

The TorchTrainer and what runs on the workers are in `raysl.launch.torch_trainer`: each worker
calls `raysl.train.fit` exactly as `raysl train` does alone (DDP, cross-worker negatives and
global batch norm come from the loop itself). This module is the driver side of
`raysl train --workers N`:

- checkpoints go through `ray.train.report` to `storage` (a local/NFS path or a pyarrow URI
  such as `s3://`, `gs://`, `file://`), uploaded atomically;
- `FailureConfig(max_failures)` restarts failed workers, which resume from the newest
  checkpoint; the run name is deterministic, so a restarted driver resumes the same run;
- rank 0 streams progress events through a Ray queue to this process, which renders them
  with the same reporters as a single-process run, while Ray's own logs stay in files.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
from ray.util.queue import Empty, Queue

from raysl.config import Config
from raysl.errors import ConfigError, Problem, TrainingFailedError
from raysl.launch.capacity import Demand, check_capacity
from raysl.launch.torch_trainer import torch_trainer
from raysl.reporting import Reporter, RunInfo

PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class Scale:
    """How many workers, with which resources, placed how.

    Args:
        workers: N training processes (one per GPU on GPU clusters).
        gpus_per_worker: 0 for CPU workers (gloo); 1 for one GPU each (NCCL); fractions share GPUs.
        cpus_per_worker: CPUs reserved per worker.
        placement: Ray placement strategy; SPREAD puts workers on different nodes.
        max_failures: worker-group restarts allowed before the run fails.
    """

    workers: int
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    placement: str = "PACK"
    max_failures: int = 0

    def check(self, cfg: Config) -> None:
        """Refuse, before Ray starts, a scale that cannot run this config."""
        problems = []
        if self.workers < 1:
            problems.append(Problem(f"must be at least 1 (got {self.workers})", key="--workers"))
        elif cfg.data.batch_size % self.workers:
            problems.append(
                Problem(
                    f"the global batch ({cfg.data.batch_size}) must be divisible by --workers ({self.workers}); "
                    f"each worker takes batch_size / workers images",
                    key="data.batch_size",
                )
            )
        if self.placement not in PLACEMENTS:
            problems.append(Problem(f"must be one of {', '.join(PLACEMENTS)}", key="--placement"))
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            problems.append(
                Problem(
                    "resources per worker must be positive",
                    key="--cpus-per-worker/--gpus-per-worker",
                )
            )
        if self.gpus_per_worker == 0 and cfg.device == "cuda":
            problems.append(Problem("device is 'cuda' but --gpus-per-worker is 0", key="device"))
        if problems:
            raise ConfigError(problems)

    def demand(self) -> Demand:
        """What the run reserves, for `check_capacity` against the cluster joined."""
        return Demand(
            self.workers,
            self.cpus_per_worker,
            self.gpus_per_worker,
            placement=self.placement,
            keys=("--workers", "--cpus-per-worker", "--gpus-per-worker"),
        )


def train_on_ray(
    cfg: Config,
    name: str,
    scale: Scale,
    storage: str,
    reporter: Reporter,
    address: str | None = None,
    log_file: Path | None = None,
    workers_file: Path | None = None,
) -> dict[str, Any]:
    """Run `fit(cfg)` on `scale.workers` Ray Train workers; progress goes to `reporter` here.

    Returns:
        The final metrics (as `fit()` returns them) plus `checkpoint`, the storage path of the
        newest checkpoint.

    Raises:
        ConfigError: bad input found by a worker (e.g. a missing data path).
        TrainingFailedError: the run failed more than `scale.max_failures` times.
    """
    from raysl.launch.session import ray_session

    scale.check(cfg)
    with ray_session(address, log_file=log_file):
        waiting = check_capacity(scale.demand(), address)  # before any worker is asked for
        if waiting:
            print(f"note: {waiting}", file=sys.stderr, flush=True)
        events = Queue(actor_options={"num_cpus": 0})
        datasets, stream = {}, cfg.data.source == "parquet"
        if stream:  # Parquet exports stream through Ray Data instead of loading into memory
            from raysl.launch.ray_data import stream_plan, train_dataset

            plan = stream_plan(cfg)
            if len(plan.train_index) < cfg.data.batch_size:
                raise ConfigError(
                    Problem(
                        "the global batch is larger than the training split", key="data.batch_size"
                    )
                )
            datasets["train"] = train_dataset(cfg, plan)
        trainer = torch_trainer(
            cfg,
            scale,
            storage,
            run_name=name,
            fit_name=name,
            keep=cfg.checkpoint.keep,
            events=events,
            stream=stream,
            datasets=datasets,
        )
        pump = _EventPump(reporter, workers_file)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(trainer.fit)
            while not future.done():
                pump.drain(events, timeout=0.2)
            pump.drain(events, timeout=0)
            if pump.config_error is not None:
                raise pump.config_error
            try:
                result = future.result()
            except ray.train.TrainingFailedError as error:
                reporter.fail(error)
                raise TrainingFailedError(_first_line(error)) from error
    summary = dict(pump.summary or result.metrics or {})
    if result.checkpoint is not None:
        summary["checkpoint"] = result.checkpoint.path
    return summary


class _EventPump:
    """Dispatches the events rank 0 sends to the reporters of this (driver) process."""

    def __init__(self, reporter: Reporter, workers_file: Path | None) -> None:
        self.reporter = reporter
        self.workers_file = workers_file
        self.workers: dict[int, dict[str, Any]] = {}
        self.summary: dict[str, Any] | None = None
        self.config_error: ConfigError | None = None

    def drain(self, events: Queue, timeout: float) -> None:
        while True:
            try:
                kind, payload = events.get(block=timeout > 0, timeout=timeout or None)
            except Empty:
                return
            self.handle(kind, payload)
            timeout = 0

    def handle(self, kind: str, payload: Any) -> None:
        if kind == "worker":
            self.workers[payload["rank"]] = payload
            if self.workers_file is not None:
                import json

                self.workers_file.write_text(
                    json.dumps([self.workers[r] for r in sorted(self.workers)], indent=2)
                )
        elif kind == "start":
            self.reporter.start(RunInfo(**payload))
        elif kind == "step":
            epoch, step, metrics = payload
            self.reporter.step(epoch, step, metrics)
        elif kind == "epoch":
            metrics, checkpoint = payload
            self.reporter.epoch(metrics, Path(checkpoint) if checkpoint else None)
        elif kind == "finish":
            self.summary = dict(payload)
            self.reporter.finish(payload)
        elif kind == "config_error":
            self.config_error = ConfigError([Problem(**p) for p in payload])


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
