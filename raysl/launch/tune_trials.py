"""The pieces of a study's Tuner: the trainables, the ASHA scheduler, the concurrency.

A trial with one worker runs `raysl.train.fit` directly inside the Tune trial (a TorchTrainer
would add ~20 s per trial on a small machine); a trial with several workers launches the
TorchTrainer of `raysl.launch.torch_trainer` from inside the trial, the Train V2 pattern, and
forwards its rank-0 reports to Tune with `TuneReportCallback`. Every epoch is one Tune report,
so ASHA's rungs are in epochs. Trials checkpoint every epoch and resume from it when restored.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
import ray.tune

from raysl.config import Config
from raysl.launch.ray_train import Scale
from raysl.launch.session import DRIVER_RESOURCE
from raysl.reporting import Reporter
from raysl.search import SearchSpec


def scheduler(spec: SearchSpec) -> Any:
    """ASHA over epochs, or None where the space sets no scheduler."""
    if spec.tune.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # one report per epoch: rungs in epochs
        max_t=spec.base.epochs,
        grace_period=spec.tune.scheduler.grace_period,
        reduction_factor=spec.tune.scheduler.reduction_factor,
    )


def trainable(spec: SearchSpec, storage: str) -> Any:
    """The Tune trainable of `spec`'s trials, with the resources each trial reserves."""
    r = spec.tune.resources
    base = spec.base.override(
        {"eval.test": False}
    ).to_flat()  # the test split is never seen by a study
    if r.workers == 1:
        function = ray.tune.with_parameters(_fit_trial, base=base)
        return ray.tune.with_resources(function, {"cpu": r.cpu, "gpu": r.gpu})
    scale = Scale(workers=r.workers, gpus_per_worker=r.gpu, cpus_per_worker=r.cpu)
    function = ray.tune.with_parameters(
        _ray_train_trial, base=base, storage=storage, name=spec.name, scale=scale
    )
    return ray.tune.with_resources(function, _driver_resources())  # the trial only drives


def _driver_resources() -> dict[str, float]:
    """What a multi-worker trial (a Ray Train driver) reserves: a sliver of raysl's driver
    resource where the cluster has it (local clusters raysl starts), else 0.01 CPU."""
    if ray.cluster_resources().get(DRIVER_RESOURCE):
        return {DRIVER_RESOURCE: 0.001}
    return {"cpu": 0.01}


def auto_concurrency(spec: SearchSpec) -> int:
    """As many concurrent trials as the cluster's CPUs and GPUs hold."""
    r = spec.tune.resources
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 1) // (r.cpu * r.workers))] if r.cpu else []
    if r.gpu:
        fits.append(int(total.get("GPU", 0) // (r.gpu * r.workers)))
    return max(1, min(fits or [1]))


# ---- inside the trials -------------------------------------------------------------------------
class _TuneReporter(Reporter):
    """One `ray.tune.report` per epoch, with the epoch's checkpoint."""

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        tune_checkpoint = (
            ray.tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        )
        ray.tune.report(dict(metrics), checkpoint=tune_checkpoint)


def _fit_trial(params: dict[str, Any], base: dict[str, Any]) -> None:
    """A single-worker trial: `fit()` in this Tune trial process, resumed from its checkpoint."""
    import torch

    from raysl.runtime import Runtime
    from raysl.train import fit

    cfg = Config.from_flat(base).override(params)
    device = (
        torch.device("cuda")
        if torch.cuda.is_available() and cfg.device != "cpu"
        else torch.device("cpu")
    )
    with tempfile.TemporaryDirectory(prefix="raysl-trial-") as tmp:
        resume_from = None
        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is not None:
            resume_from = checkpoint.to_directory(os.path.join(tmp, "resume"))
        fit(
            cfg,
            _TuneReporter(),
            Runtime(device),
            checkpoint_dir=Path(tmp) / "checkpoints",
            resume_from=resume_from,
        )


def _ray_train_trial(
    params: dict[str, Any], base: dict[str, Any], storage: str, name: str, scale: Scale
) -> None:
    """A multi-worker trial: a TorchTrainer launched from the trial (Train V2 pattern)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysl.launch.torch_trainer import torch_trainer

    cfg = Config.from_flat(base).override(params)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = torch_trainer(
        cfg,
        scale,
        storage,
        run_name=f"{name}-train-{trial_id}",  # deterministic: a restored trial resumes its run
        fit_name=trial_id,
        keep=1,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()
