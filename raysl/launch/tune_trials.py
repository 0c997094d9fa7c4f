"""The pieces of a study's Tuner: the trainables, the scheduler, the concurrency.

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
from raysl.search.spec import Pbt


def scheduler(spec: SearchSpec, key: str | None = None) -> Any:
    """ASHA over epochs that never stops the baseline trial (`raysl.launch.asha`; `key`: the
    study's searcher in `SEARCHERS`), PBT (`raysl.launch.pbt`), or None where the space sets
    no scheduler."""
    if spec.tune.scheduler is None:
        return None
    if isinstance(spec.tune.scheduler, Pbt):
        from raysl.launch.pbt import pbt_scheduler

        return pbt_scheduler(spec)
    from raysl.launch.asha import asha_scheduler

    return asha_scheduler(spec, key)


def trainable(
    spec: SearchSpec, storage: str, runs: list[dict] | None = None, name: str | None = None
) -> Any:
    """The Tune trainable of `spec`'s trials, with the resources each trial reserves.

    `runs` (finalists, `raysl.launch.finalists`): the trial's config is `{"finalist": i}` and
    it runs `runs[i]` (searched values and seed) instead. `name`: the study's Tune experiment
    (`raysl.outputs.experiment_name`; default `spec.name`), which names a multi-worker trial's
    Ray Train run in `storage`."""
    r = spec.tune.resources
    extra = {"runs": runs} if runs is not None else {}
    base = spec.base.override(
        {"eval.test": False}
    ).to_flat()  # the test split is never seen by a study
    if r.workers == 1:
        mutable = spec.tune.scheduler.mutate if isinstance(spec.tune.scheduler, Pbt) else ()
        function = ray.tune.with_parameters(_fit_trial, base=base, mutable=tuple(mutable), **extra)
        return ray.tune.with_resources(function, {"cpu": r.cpu, "gpu": r.gpu})
    scale = Scale(workers=r.workers, gpus_per_worker=r.gpu, cpus_per_worker=r.cpu)
    function = ray.tune.with_parameters(
        _ray_train_trial, base=base, storage=storage, name=name or spec.name, scale=scale, **extra
    )
    return ray.tune.with_resources(function, _driver_resources())  # the trial only drives


def search_alg(spec: SearchSpec, out: Path, key: str, concurrency: int) -> Any:
    """Optuna (`StudySearch`), or under PBT the initial population (`raysl.launch.pbt`)."""
    from raysl.launch.optuna_search import SEARCHERS, make_searcher

    if not isinstance(spec.tune.scheduler, Pbt):
        return make_searcher(spec, out, key)
    from raysl.launch.pbt import Population, initial_population

    population = Population(initial_population(spec), spec.base.to_flat())
    SEARCHERS[key] = population  # type: ignore[assignment]
    return population.search_alg(concurrency)


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
    """One `ray.tune.report` per epoch, with the epoch's checkpoint; `first` goes with the
    first report only (PBT: which trial's checkpoint this one continues), `every` with each."""

    def __init__(
        self, first: Mapping[str, Any] | None = None, every: Mapping[str, Any] | None = None
    ) -> None:
        self.first, self.every = dict(first or {}), dict(every or {})

    def epoch(self, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        tune_checkpoint = (
            ray.tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        )
        ray.tune.report({**metrics, **self.every, **self.first}, checkpoint=tune_checkpoint)
        self.first = {}


def _fit_trial(
    params: dict[str, Any],
    base: dict[str, Any],
    mutable: tuple[str, ...] = (),
    runs: list[dict] | None = None,
) -> None:
    """A single-worker trial: `fit()` in this Tune trial process, resumed from its checkpoint
    (under PBT, maybe another trial's, with the `mutable` keys changed)."""
    import torch

    from raysl.runtime import Runtime
    from raysl.train import fit

    if runs is not None:  # a finalist
        params = runs[params["finalist"]]
    cfg = Config.from_flat(base).override(params)
    device = (
        torch.device("cuda")
        if torch.cuda.is_available() and cfg.device != "cpu"
        else torch.device("cpu")
    )
    trial_id = ray.tune.get_context().get_trial_id()
    with tempfile.TemporaryDirectory(prefix="raysl-trial-") as tmp:
        resume_from, first = None, {}
        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is not None:
            resume_from = checkpoint.to_directory(os.path.join(tmp, "resume"))
            if mutable:
                from raysl.launch.pbt import exploit_note

                first = exploit_note(Path(resume_from), trial_id, params)
        # PBT: a donor's config replaces the searched values; log those in force
        every = _constant_values(params, mutable) if mutable else {}
        fit(
            cfg,
            _TuneReporter(first, every),
            Runtime(device, devices=_held(device)),
            checkpoint_dir=Path(tmp) / "checkpoints",
            resume_from=resume_from,
            name=trial_id,
            mutable=mutable,
        )


def _held(device: Any) -> float | None:
    """What this trial reserved, for `cost/device_hours`: its GPUs on cuda, else its CPUs."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    return assigned.get("GPU" if device.type == "cuda" else "CPU")


def _constant_values(params: Mapping[str, Any], mutable: tuple[str, ...]) -> dict[str, float]:
    """`config/<key>` for every numeric searched key PBT does not mutate (those it mutates the
    loop reports itself): after an exploit they are the donor's, not the trial's first."""
    return {
        f"config/{k}": float(v)
        for k, v in params.items()
        if k not in mutable and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _ray_train_trial(
    params: dict[str, Any],
    base: dict[str, Any],
    storage: str,
    name: str,
    scale: Scale,
    runs: list[dict] | None = None,
) -> None:
    """A multi-worker trial: a TorchTrainer launched from the trial (Train V2 pattern)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysl.launch.torch_trainer import torch_trainer

    if runs is not None:  # a finalist
        params = runs[params["finalist"]]
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
