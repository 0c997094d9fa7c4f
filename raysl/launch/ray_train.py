"""Ray Train: the unchanged `fit()` on N workers, checkpoints in shared storage, restarts on failure.

Ray Train starts one process per worker, sets the torchrun variables and the process group
(NCCL on GPUs, gloo on CPUs), then calls `_train_worker`, which calls `raysl.train.fit` exactly
as `raysl train` does alone: DDP, cross-worker negatives and global batch norm come from the
loop itself. This module adds what only a cluster needs:

- checkpoints go through `ray.train.report` to `storage` (a local/NFS path or a pyarrow URI
  such as `s3://`, `gs://`, `file://`), uploaded atomically (`_upload_atomically`);
- `FailureConfig(max_failures)` restarts failed workers, which resume from the newest
  checkpoint (`ray.train.get_checkpoint`); the run name is deterministic, so a restarted
  driver resumes the same run;
- rank 0 streams progress events through a Ray queue to this process, which renders them
  with the same reporters as a single-process run, while Ray's own logs stay in files.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.util.queue import Empty, Queue

from raysl.config import Config
from raysl.errors import ConfigError, Problem, TrainingFailedError
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
        events = Queue(actor_options={"num_cpus": 0})
        resources = {"CPU": scale.cpus_per_worker}
        if scale.gpus_per_worker:
            resources["GPU"] = scale.gpus_per_worker
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
        trainer = ray.train.torch.TorchTrainer(
            _train_worker,
            train_loop_config={
                "config": cfg.to_flat(),
                "name": name,
                "events": events,
                "stream": stream,
            },
            datasets=datasets or None,
            scaling_config=ray.train.ScalingConfig(
                num_workers=scale.workers,
                use_gpu=scale.gpus_per_worker > 0,
                resources_per_worker=resources,
                placement_strategy=scale.placement,
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=ray.train.FailureConfig(max_failures=scale.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            ),
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


# ---- on the workers ------------------------------------------------------------------------
def _train_worker(loop_config: Mapping[str, Any]) -> None:
    """Ray Train's per-worker function: build the runtime from Ray's context and call `fit()`."""
    from raysl.runtime import Runtime
    from raysl.train import fit

    context = ray.train.get_context()
    runtime = Runtime(
        ray.train.torch.get_device(), context.get_world_rank(), context.get_world_size()
    )
    events: Queue | None = loop_config["events"]
    _send(
        events,
        "worker",
        {
            "rank": runtime.rank,
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(runtime.device),
        },
    )
    cfg = Config.from_flat(loop_config["config"])
    reporter = _RayTrainReporter(events if runtime.rank == 0 else None)
    with tempfile.TemporaryDirectory(prefix="raysl-") as tmp:
        resume_from = _download_newest_checkpoint(os.path.join(tmp, "resume"))
        staging = Path(tmp) / "checkpoints" if runtime.rank == 0 else None
        try:
            feed = None
            if loop_config["stream"]:
                from raysl.launch.ray_data import streamed_feed

                feed = streamed_feed(cfg, runtime)
            fit(cfg, reporter, runtime, staging, resume_from, loop_config["name"], feed)
        except ConfigError as error:
            if runtime.rank == 0:
                _send(events, "config_error", [asdict(p) for p in error.problems])
            raise


def _download_newest_checkpoint(local: str) -> str | None:
    """The newest complete checkpoint of this run, copied to `local`; None for a fresh run.

    Ray registers a reported checkpoint asynchronously, so a worker killed right after
    reporting can leave a complete checkpoint that `ray.train.get_checkpoint()` does not
    know yet. Checkpoints are uploaded atomically (`_upload_atomically`), so the newest
    complete one in storage is as safe to resume from and loses less work.
    """
    import pyarrow.fs

    from raysl.checkpoint import PATTERN, STATE

    storage = ray.train.get_context().get_storage()
    fs, base = storage.storage_filesystem, storage.build_checkpoint_path_from_name("checkpoints")
    found = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    epochs = [int(m.group(1)) for info in found if (m := PATTERN.match(info.base_name))]
    complete = [
        e
        for e in epochs
        if fs.get_file_info(f"{base}/epoch_{e:04d}/{STATE}").type == pyarrow.fs.FileType.File
    ]
    registered = ray.train.get_checkpoint()
    if registered is not None:
        match = PATTERN.match(Path(registered.path).name)
        if match and int(match.group(1)) >= max(complete, default=-1):
            return registered.to_directory(local)
    if not complete:
        return None
    source = f"{base}/epoch_{max(complete):04d}"
    os.makedirs(local, exist_ok=True)
    pyarrow.fs.copy_files(
        source, local, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
    )
    return local


def _send(events: Queue | None, kind: str, payload: Any) -> None:
    if events is not None:
        events.put((kind, payload))


class _RayTrainReporter(Reporter):
    """Reports every epoch to Ray Train (all ranks: it is a barrier) and events to the driver."""

    def __init__(self, events: Queue | None) -> None:
        self.events = events

    def start(self, info: RunInfo) -> None:
        _send(self.events, "start", asdict(info))

    def step(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        _send(self.events, "step", (epoch, step, dict(metrics)))

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        persisted = None
        if checkpoint is not None:
            ray.train.report(
                dict(metrics),
                checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                checkpoint_dir_name=f"checkpoints/{checkpoint.name}",
                checkpoint_upload_fn=_upload_atomically,
            )
            persisted = _storage_path(f"checkpoints/{checkpoint.name}")
        else:
            ray.train.report(dict(metrics))
        _send(self.events, "epoch", (dict(metrics), persisted))

    def finish(self, summary: Mapping[str, float]) -> None:
        _send(self.events, "finish", dict(summary))


def _storage_path(dir_name: str) -> str:
    storage = ray.train.get_context().get_storage()
    return storage.build_checkpoint_path_from_name(dir_name)


def _upload_atomically(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """Persist a checkpoint so that no reader ever sees half of it.

    On file systems (local disk, NFS) the files go to a hidden temporary directory that is
    then renamed into place. On object stores, where a directory cannot be renamed but each
    object appears whole, `state.pt` is uploaded last: `raysl.checkpoint` treats a directory
    without it as incomplete, and Ray registers a checkpoint only after this returns.
    """
    import pyarrow.fs

    storage = ray.train.get_context().get_storage()
    fs = storage.storage_filesystem
    final = storage.build_checkpoint_path_from_name(dir_name)
    source_fs, source = checkpoint.filesystem, checkpoint.path
    names = sorted(p.name for p in Path(source).iterdir())
    names.sort(key=lambda n: n == "state.pt")  # state.pt last
    if fs.get_file_info(final).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(final)  # a previous attempt at this epoch, never registered
    if _is_local(fs):
        parent, _, base = final.rpartition("/")
        target = f"{parent}/.tmp-{base}-{uuid.uuid4().hex[:8]}"
    else:
        target = final
    fs.create_dir(target)
    for name in names:
        pyarrow.fs.copy_files(
            f"{source}/{name}",
            f"{target}/{name}",
            source_filesystem=source_fs,
            destination_filesystem=fs,
        )
    if target != final:
        fs.move(target, final)
    return ray.train.Checkpoint(path=final, filesystem=fs)


def _is_local(fs: Any) -> bool:
    import pyarrow.fs

    while isinstance(fs, pyarrow.fs.SubTreeFileSystem):
        fs = fs.base_fs
    return isinstance(fs, pyarrow.fs.LocalFileSystem)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
