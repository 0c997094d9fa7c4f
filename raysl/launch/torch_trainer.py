"""The TorchTrainer that runs `fit()` on N workers, and what runs on each worker.

`torch_trainer` builds it in one place for `raysl train --workers` (`raysl.launch.ray_train`)
and for the multi-worker trials of a study (`raysl.launch.tune_trials`). Ray Train starts one
process per worker, sets the torchrun variables and the process group (NCCL on GPUs, gloo on
CPUs), then calls `train_worker`, which calls `raysl.train.fit` exactly as `raysl train` does
alone. On the workers:

- every epoch is one `ray.train.report` (all ranks: it is a barrier); rank 0's checkpoint is
  uploaded atomically to the run's storage (`_upload_atomically`);
- a restarted worker resumes from the newest complete checkpoint in storage
  (`_download_newest_checkpoint`);
- rank 0 sends progress events through a Ray queue, when the driver gave one.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import ray.train.torch
from ray.util.queue import Queue

from raysl.config import Config
from raysl.errors import ConfigError
from raysl.reporting import Reporter, RunInfo

if TYPE_CHECKING:
    from raysl.launch.ray_train import Scale


def torch_trainer(
    cfg: Config,
    scale: Scale,
    storage: str,
    run_name: str,
    fit_name: str,
    keep: int,
    events: Queue | None = None,
    stream: bool = False,
    datasets: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer running `fit(cfg)` on `scale.workers` workers.

    Args:
        run_name: the Ray Train run, `<storage>/<run_name>`; deterministic, so a restarted
            driver (or a restored trial) resumes the same run.
        fit_name: the run name `fit()` is given.
        keep: checkpoints kept in storage.
        events: the queue rank 0 sends progress events to; None sends none.
        stream: the training split comes from `datasets["train"]` (Ray Data), not from disk.
        callbacks: Ray Train callbacks (a trial's `TuneReportCallback`).
    """
    resources = {"CPU": scale.cpus_per_worker}
    if scale.gpus_per_worker:
        resources["GPU"] = scale.gpus_per_worker
    return ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={
            "config": cfg.to_flat(),
            "name": fit_name,
            "events": events,
            "stream": stream,
        },
        datasets=dict(datasets) if datasets else None,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scale.workers,
            use_gpu=scale.gpus_per_worker > 0,
            resources_per_worker=resources,
            placement_strategy=scale.placement,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            callbacks=list(callbacks) or None,
            failure_config=ray.train.FailureConfig(max_failures=scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
        ),
    )


# ---- on the workers ------------------------------------------------------------------------
def train_worker(loop_config: Mapping[str, Any]) -> None:
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
