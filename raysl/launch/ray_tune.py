"""Ray Tune studies: Optuna proposes, ASHA stops early, each trial is one `fit()`, MLflow records.

- **Trials.** A trial with one worker runs `raysl.train.fit` directly inside the Tune trial (a
  TorchTrainer would add ~20 s per trial on a small machine); a trial with several workers
  launches a TorchTrainer from inside the trial, the Train V2 pattern, and forwards its rank-0
  reports to Tune with `TuneReportCallback`. Every epoch is one Tune report, so ASHA's rungs
  are in epochs. Trials checkpoint every epoch and resume from it when restored.
- **Search.** `OptunaSearch` with a define-by-run space (`SearchSpec.sample`: conditionals),
  TPE (multivariate, grouped, constant liar for concurrent trials, seeded) and persistent
  storage (an Optuna journal file in the study directory).
- **ASHA-stopped trials are told to Optuna as PRUNED, not COMPLETE** (`_OptunaSearch`). Ray's
  OptunaSearch reports the metric of a trial's last epoch as its final value, so TPE would
  treat a trial stopped at epoch 2 as if its early kNN were what it achieves; as PRUNED,
  TPE ranks it below every complete trial and keeps its intermediate values.
- **MLflow.** The driver (never the workers) logs: a parent run per study, a nested child per
  trial, per-epoch metrics and the end status (FINISHED / KILLED for stopped / FAILED), via
  `raysl.tracking.StudyTracker` from a Tune callback.
- **Resume.** `Tuner.restore` continues the study from its directory; the parent run and the
  Optuna study continue; child runs are found by trial id, never duplicated.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.tune
from ray.tune.search.optuna import OptunaSearch

from raysl.config import Config
from raysl.launch.session import DRIVER_RESOURCE
from raysl.reporting import Reporter
from raysl.search import SearchSpec
from raysl.study_console import StudyTable

# Tune result fields that are bookkeeping, not metrics.
_TUNE_FIELDS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "date", "pid", "hostname",
    "node_ip", "time_since_restore", "iterations_since_restore", "done", "trial_id", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "config",
}  # fmt: skip

# The live driver-side objects of the running study, looked up by the (pickled) callback.
_ACTIVE: dict[str, dict[str, Any]] = {}


def run_study(
    spec: SearchSpec,
    out: Path,
    storage: str,
    tracking_uri: str,
    resume: bool = False,
    address: str | None = None,
    live: bool | None = None,
) -> dict[str, Any]:
    """Run (or continue) the study of `spec`; returns the best trial and the leaderboard.

    Args:
        out: the local study directory (log, study.json with the MLflow parent run id and the
            Optuna journal, the leaderboard files).
        storage: where Tune keeps the experiment and trial checkpoints (`<storage>/<name>`).
    """
    import optuna

    from raysl.launch.session import ray_session
    from raysl.tracking import StudyTracker

    optuna.logging.disable_default_handler()  # Optuna's log lines go to the study's log file
    optuna.logging.enable_propagation()
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out) if resume else {}
    state.setdefault("optuna_study", f"{spec.name}-{uuid.uuid4().hex[:8]}")
    epochs = spec.base.epochs
    table = StudyTable(
        spec.name, spec.tune.metric, spec.tune.mode, epochs, spec.tune.num_samples, live=live
    )
    with ray_session(address, log_file=out / "raysl.log"):
        tracker = StudyTracker(
            tracking_uri,
            experiment=spec.name,
            study_name=state["optuna_study"],
            description=f"raysl tune {spec.path}",
            tags={"raysl.search_space": str(spec.path)},
            parent_run_id=state.get("parent_run_id"),
        )
        state["parent_run_id"] = tracker.parent_run_id
        _save_state(out, state)
        if not resume:
            tracker.log_study_params(_study_params(spec))
        key = state["optuna_study"]
        _ACTIVE[key] = {"tracker": tracker, "table": table, "spec": spec, "statuses": {}}
        experiment = f"{storage.rstrip('/')}/{spec.name}"
        trainable = _trainable(spec, storage)
        concurrency = spec.tune.max_concurrent or _auto_concurrency(spec)
        restored = resume and ray.tune.Tuner.can_restore(experiment)
        table.start(f", {concurrency} at a time" + (", resumed" if restored else ""))
        for note in spec.notes:
            table.console.print(f"[dim]note: {note}[/]")
        status, results = "failed", None
        try:
            if restored:
                tuner = ray.tune.Tuner.restore(experiment, trainable, resume_errored=True)
            else:
                tuner = ray.tune.Tuner(
                    trainable,
                    tune_config=ray.tune.TuneConfig(
                        metric=spec.tune.metric,
                        mode=spec.tune.mode,
                        search_alg=_searcher(spec, out, state["optuna_study"]),
                        scheduler=_scheduler(spec),
                        num_samples=spec.tune.num_samples,
                        max_concurrent_trials=concurrency,
                        time_budget_s=spec.tune.time_budget_s,
                        reuse_actors=True,  # no fresh process (and torch import) per trial
                    ),
                    run_config=ray.tune.RunConfig(
                        name=spec.name,
                        storage_path=storage,
                        callbacks=[_StudyCallback(key)],
                        checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
                        failure_config=ray.tune.FailureConfig(max_failures=spec.tune.max_failures),
                        verbose=0,
                    ),
                )
            results = tuner.fit()
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if results is not None:
                _merge_results(_ACTIVE[key], results, spec)
            board = _leaderboard(_ACTIVE[key], spec)
            best = board[0] if board else None
            checkpoint = _best_checkpoint(results, best) if status == "completed" and best else None
            best_record = None
            if best is not None:
                record = _ACTIVE[key]["statuses"][best["trial_id"]]
                config = spec.config_for(best["searched"]).model_dump(exclude_none=True)
                best_record = {
                    "trial_id": best["trial_id"],
                    "metrics": record.get("metrics", {}),
                    "config": config,
                    "name": spec.name,
                }
            tracker.study_ended(
                best_record,
                status,
                best_checkpoint=checkpoint,
                optuna_study=_optuna_study(out, state["optuna_study"]),
            )
            _write_leaderboard(out, spec.name, board)
            footer = [
                f"MLflow: experiment '{spec.name}', parent run {tracker.parent_run_id} ({tracking_uri}); compare trials with: raysl ui"
            ]
            if best:
                footer.insert(
                    0,
                    f"best: trial {best['trial_id']} {spec.tune.metric} {best.get(spec.tune.metric, float('nan')):.2f}",
                )
            table.finish(board[:10], footer)
            _ACTIVE.pop(key, None)
    return {"best": best, "leaderboard": board, "parent_run_id": tracker.parent_run_id}


# ---- pieces of the Tuner -----------------------------------------------------------------------
class _OptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped before its last epoch is PRUNED."""

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if (
            not error
            and result
            and result.get("epoch", self.max_epochs) < self.max_epochs
            and trial_id not in self._completed_trials
        ):
            import optuna

            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def _searcher(spec: SearchSpec, out: Path, study_name: str) -> _OptunaSearch:
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=spec.tune.seed,
        multivariate=True,
        group=True,  # conditional spaces: model each set of co-occurring params jointly
        constant_liar=True,  # concurrent trials do not all propose the same point
        n_startup_trials=spec.tune.startup_trials,
    )
    return _OptunaSearch(
        space=spec.sample,
        metric=spec.tune.metric,
        mode=spec.tune.mode,
        sampler=sampler,
        study_name=study_name,
        storage=_optuna_storage(out),
        max_epochs=spec.base.epochs,
    )


def _optuna_storage(out: Path) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna.journal")))


def _optuna_study(out: Path, study_name: str) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=_optuna_storage(out))
    except KeyError:  # no trial was ever asked for
        return None


def _scheduler(spec: SearchSpec) -> Any:
    if spec.tune.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # one report per epoch: rungs in epochs
        max_t=spec.base.epochs,
        grace_period=spec.tune.scheduler.grace_period,
        reduction_factor=spec.tune.scheduler.reduction_factor,
    )


def _trainable(spec: SearchSpec, storage: str) -> Any:
    r = spec.tune.resources
    base = spec.base.override(
        {"eval.test": False}
    ).to_flat()  # the test split is never seen by a study
    if r.workers == 1:
        function = ray.tune.with_parameters(_fit_trial, base=base)
        return ray.tune.with_resources(function, {"cpu": r.cpu, "gpu": r.gpu})
    function = ray.tune.with_parameters(
        _ray_train_trial,
        base=base,
        storage=storage,
        name=spec.name,
        resources=(r.workers, r.cpu, r.gpu),
    )
    return ray.tune.with_resources(function, _driver_resources())  # the trial only drives


def _driver_resources() -> dict[str, float]:
    """What a multi-worker trial (a Ray Train driver) reserves: a sliver of raysl's driver
    resource where the cluster has it (local clusters raysl starts), else 0.01 CPU."""
    if ray.cluster_resources().get(DRIVER_RESOURCE):
        return {DRIVER_RESOURCE: 0.001}
    return {"cpu": 0.01}


def _auto_concurrency(spec: SearchSpec) -> int:
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
    params: dict[str, Any],
    base: dict[str, Any],
    storage: str,
    name: str,
    resources: tuple[int, float, float],
) -> None:
    """A multi-worker trial: a TorchTrainer launched from the trial (Train V2 pattern)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysl.launch.ray_train import _train_worker

    workers, cpu, gpu = resources
    cfg = Config.from_flat(base).override(params)
    trial_id = ray.tune.get_context().get_trial_id()
    per_worker = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    trainer = ray.train.torch.TorchTrainer(
        _train_worker,
        train_loop_config={
            "config": cfg.to_flat(),
            "name": trial_id,
            "events": None,
            "stream": False,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"{name}-train-{trial_id}",  # deterministic: a restored trial resumes its Train run
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


# ---- on the driver -------------------------------------------------------------------------------
class _StudyCallback(ray.tune.Callback):
    """Feeds trial events to MLflow and the terminal. Holds only a key, so Tune can pickle it
    into the experiment state and a restored study finds the new driver's objects."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _active(self) -> dict[str, Any] | None:
        return _ACTIVE.get(self.key)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        active = self._active()
        if active is None:
            return
        spec: SearchSpec = active["spec"]
        searched = dict(trial.config)
        config = spec.config_for(searched).override({"eval.test": False}).to_flat()
        active["tracker"].trial_started(trial.trial_id, str(trial), config, searched)
        active["statuses"][trial.trial_id] = {
            "searched": searched,
            "status": "running",
            "epochs": 0,
        }
        active["table"].trial_started(trial.trial_id, searched)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        active = self._active()
        if active is None:
            return
        metrics = {
            k: float(v)
            for k, v in result.items()
            if k not in _TUNE_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        epoch = int(metrics.get("epoch", result.get("training_iteration", 0)))
        active["tracker"].trial_result(trial.trial_id, metrics, step=epoch)
        record = active["statuses"].setdefault(trial.trial_id, {"searched": dict(trial.config)})
        record.update(epochs=epoch, metrics=metrics)
        active["table"].trial_result(trial.trial_id, epoch, metrics.get(active["spec"].tune.metric))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        active = self._active()
        if active is None:
            return
        spec: SearchSpec = active["spec"]
        record = active["statuses"].setdefault(trial.trial_id, {"searched": dict(trial.config)})
        last = getattr(trial, "last_result", None) or {}  # survives a restored study
        epoch = max(int(record.get("epochs", 0)), int(last.get("epoch", 0)))
        record["epochs"] = epoch
        if "metrics" not in record and last:
            record["metrics"] = {
                k: float(v)
                for k, v in last.items()
                if k not in _TUNE_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        if epoch >= spec.base.epochs:
            status, reason, stopped_at = "completed", "", None
        else:
            status, reason, stopped_at = "stopped", f"stopped by ASHA after epoch {epoch}", epoch
        record["status"] = status
        active["tracker"].trial_ended(trial.trial_id, status, reason, stopped_at)
        active["table"].trial_ended(trial.trial_id, status, reason)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        active = self._active()
        if active is None:
            return
        reason = _error_line(trial)
        record = active["statuses"].setdefault(trial.trial_id, {"searched": dict(trial.config)})
        record["status"] = "failed"
        active["tracker"].trial_ended(trial.trial_id, "failed", reason, None)
        active["table"].trial_ended(trial.trial_id, "failed", reason)


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "the trial failed (see raysl.log)"


def _leaderboard(active: dict[str, Any], spec: SearchSpec) -> list[dict[str, Any]]:
    metric, sign = spec.tune.metric, 1 if spec.tune.mode == "max" else -1
    rows = []
    for trial_id, record in active["statuses"].items():
        value = (record.get("metrics") or {}).get(metric)
        rows.append(
            {
                "trial_id": trial_id,
                "status": record.get("status", "?"),
                "epochs": record.get("epochs", 0),
                metric: value,
                "searched": record.get("searched", {}),
            }
        )
    finite = [r for r in rows if isinstance(r[metric], float) and math.isfinite(r[metric])]
    rest = [r for r in rows if r not in finite]
    finite.sort(key=lambda r: (r["status"] != "completed", -sign * r[metric]))
    return finite + rest


def _merge_results(active: dict[str, Any], results: Any, spec: SearchSpec) -> None:
    """Add the trials this driver did not see run (finished before a resumed study restarted)."""
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        if not trial_id or trial_id in active["statuses"]:
            continue
        epoch = int(metrics.get("epoch", 0))
        status = (
            "failed" if result.error else ("completed" if epoch >= spec.base.epochs else "stopped")
        )
        active["statuses"][trial_id] = {
            "searched": {k: v for k, v in (result.config or {}).items()},
            "status": status,
            "epochs": epoch,
            "metrics": {
                k: float(v)
                for k, v in metrics.items()
                if k not in _TUNE_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }


def _best_checkpoint(results: Any, best: Mapping[str, Any]) -> Path | None:
    for result in results:
        if (
            result.metrics
            and result.metrics.get("trial_id") == best["trial_id"]
            and result.checkpoint is not None
        ):
            path = Path(result.checkpoint.path)
            return path if path.exists() else None
    return None


def _study_params(spec: SearchSpec) -> dict[str, Any]:
    params: dict[str, Any] = {f"search.{p.key}": _describe(p) for p in spec.params}
    t = spec.tune
    params.update({
        "tune.metric": t.metric, "tune.mode": t.mode, "tune.num_samples": t.num_samples,
        "tune.max_concurrent": t.max_concurrent or "auto", "tune.seed": t.seed,
        "tune.workers": t.resources.workers, "tune.cpu": t.resources.cpu, "tune.gpu": t.resources.gpu,
        "tune.scheduler": f"asha(grace={t.scheduler.grace_period}, rf={t.scheduler.reduction_factor})" if t.scheduler else "none",
    })  # fmt: skip
    return params


def _describe(param: Any) -> str:
    bounds = f"{list(param.choices)}" if param.kind == "choice" else f"[{param.low}, {param.high}]"
    return f"{param.kind} {bounds}" + (
        f" when {param.when.key} {param.when.op} {param.when.value}" if param.when else ""
    )


def _write_leaderboard(out: Path, name: str, rows: list[dict[str, Any]]) -> None:
    flat = [
        {**{k: v for k, v in r.items() if k != "searched"}, **r.get("searched", {})} for r in rows
    ]
    (out / "leaderboard.json").write_text(json.dumps(flat, indent=2, default=str))


def _load_state(out: Path) -> dict[str, Any]:
    path = out / "study.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(out: Path, state: Mapping[str, Any]) -> None:
    tmp = out / f".study.json.{uuid.uuid4().hex[:6]}"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / "study.json")
