"""The driver side of a study's MLflow record: the Tune callback and what it logs around.

`StudyCallback` feeds trial events to MLflow (`raysl.tracking.StudyTracker`, through the
outbox that survives a server restart) and to the terminal (`StudyTable`): a nested child run
per trial, per-epoch metrics (each once, when a checkpoint or the trial's end commits it:
`raysl.launch.epoch_log`) and the end status (FINISHED for completed and ASHA-stopped
trials, `raysl.status` telling them apart; FAILED). `merge_results` adds, on a resumed study,
the trials this driver did not see run; `study_params` and `study_records` log the study's
search space, dataset and config on the parent run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.tune

from raysl.launch.optuna_search import SEARCHERS
from raysl.search import SearchSpec

# Tune result fields that are bookkeeping, not metrics.
_TUNE_FIELDS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "date", "pid", "hostname",
    "node_ip", "time_since_restore", "iterations_since_restore", "done", "trial_id", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "config",
}  # fmt: skip

# The live driver-side objects of the running study (`raysl.launch.ray_tune.run_study`), by
# study key, looked up by the (pickled) callback.
ACTIVE: dict[str, dict[str, Any]] = {}


# ---- the callback ----------------------------------------------------------------------------------
class StudyCallback(ray.tune.Callback):
    """Feeds trial events to MLflow and the terminal. Holds only a key, so Tune can pickle it
    into the experiment state and a restored study finds the new driver's objects."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _active(self) -> dict[str, Any] | None:
        return ACTIVE.get(self.key)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        active = self._active()
        if active is None:
            return
        spec: SearchSpec = active["spec"]
        searched = dict(trial.config)
        config = spec.config_for(searched).override({"eval.test": False}).to_flat()
        searcher = SEARCHERS.get(self.key)
        if hasattr(searcher, "adopt"):  # a PBT population: numbered by its first config
            searcher.adopt(trial.trial_id, searched)
        number = searcher.number(trial.trial_id) if searcher else None
        baseline = hasattr(searcher, "is_baseline") and searcher.is_baseline(trial.trial_id)
        run_id = active["tracker"].trial_started(
            trial.trial_id, str(trial), config, searched, number=number,
            tags={"raysl.baseline": "true"} if baseline else None,
        )  # fmt: skip
        if searcher is not None:
            searcher.link(trial.trial_id, run_id)
        if "inputs" in active:  # the dataset as a run input, the config as config.yaml
            name = f"{spec.name}_trial_{number}" if number is not None else str(trial)
            active["inputs"].log(run_id, spec.config_for(searched), name, f"trial of {spec.path}")
        active["statuses"][trial.trial_id] = {
            "searched": searched,
            "status": "running",
            "epochs": 0,
        }
        active["table"].trial_started(trial.trial_id, searched, number, baseline=baseline)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        active = self._active()
        if active is None:
            return
        metrics = _metrics(result)
        epoch = int(metrics.get("epoch", result.get("training_iteration", 0)))
        active["epochs"].add(trial.trial_id, metrics, epoch)  # logged once committed
        record = active["statuses"].setdefault(trial.trial_id, {"searched": dict(trial.config)})
        record.update(epochs=epoch, metrics=metrics)
        if result.get("pbt_from"):  # PBT: this trial continues another one's checkpoint
            _exploited(self.key, active, trial, record, result)
        active["table"].trial_result(trial.trial_id, epoch, metrics.get(active["spec"].tune.metric))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        commit_epochs(self._active(), trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        drop_epochs(self._active(), trial)

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
            record["metrics"] = _metrics(last)
        if epoch >= spec.base.epochs:
            status, reason, stopped_at = "completed", "", None
        else:
            status, stopped_at = "stopped", epoch
            reason = f"stopped by ASHA after epoch {epoch} of {spec.base.epochs}"
        record["status"] = status
        tracker = active["tracker"]
        active["epochs"].commit(trial.trial_id)
        active["outbox"].call(
            "end", tracker.trial_ended, trial.trial_id, status, reason, stopped_at
        )
        active["table"].trial_ended(trial.trial_id, status, reason)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        active = self._active()
        if active is None:
            return
        reason = _error_line(trial)
        record = active["statuses"].setdefault(trial.trial_id, {"searched": dict(trial.config)})
        record["status"] = "failed"
        tracker = active["tracker"]
        active["epochs"].commit(trial.trial_id)  # no retry follows: what it ran stands
        active["outbox"].call("end", tracker.trial_ended, trial.trial_id, "failed", reason, None)
        active["table"].trial_ended(trial.trial_id, "failed", reason)


def _exploited(
    key: str, active: dict[str, Any], trial: Any, record: dict[str, Any], result: Mapping[str, Any]
) -> None:
    """A PBT exploit: the new values, a note in the live table, the count on the trial's run."""
    donor, _, epoch = str(result["pbt_from"]).rpartition("@")
    changes, now = result.get("pbt_changes", ""), dict(trial.config)
    record["searched"] = now
    record["exploits"] = record.get("exploits", 0) + 1
    searcher = SEARCHERS.get(key)
    number = searcher.number(donor) if searcher else None
    table = active["table"]
    line = f"{table.label(trial.trial_id)} continues from "
    line += f"{'#' + str(number) if number is not None else donor}'s epoch-{epoch} checkpoint"
    table.trial_exploited(trial.trial_id, now, line + (f": {changes}" if changes else ""))
    tracker = active["tracker"]
    run_id = tracker.existing_trials().get(trial.trial_id)
    if run_id:
        exploits = str(record["exploits"])
        active["outbox"].call("tag", tracker.client.set_tag, run_id, "raysl.pbt_exploits", exploits)


def commit_epochs(active: dict[str, Any] | None, trial: Any) -> None:
    """Tune registered the trial's checkpoint: its held epochs go to MLflow."""
    if active is not None:
        active["epochs"].commit(trial.trial_id)


def drop_epochs(active: dict[str, Any] | None, trial: Any) -> None:
    """The trial is retried from its last registered checkpoint: it runs its held epochs again."""
    if active is not None:
        active["epochs"].drop(trial.trial_id)


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a Tune result, without Tune's bookkeeping fields."""
    return {
        k: float(v)
        for k, v in result.items()
        if k not in _TUNE_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "the trial failed (see raysl.log)"


def row_metrics(row: Mapping[str, Any], searched: list[str]) -> dict[str, float]:
    """The metrics of a `rank_trials` row (a trial this driver did not see run)."""
    skip = {"rank", "number", "trial_id", "status", "epochs", "best", "best_epoch", *searched}
    return {
        k: v for k, v in row.items() if k not in skip and isinstance(v, float) and math.isfinite(v)
    }


def merge_results(active: dict[str, Any], results: Any, spec: SearchSpec) -> None:
    """Add the trials this driver did not see run (finished before a resumed study restarted);
    one whose MLflow run an earlier driver left RUNNING (it died between the trial's end and
    its log) is ended there now, so it is not taken for a lost trial."""
    tracker = active["tracker"]
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
            "metrics": _metrics(metrics),
        }
        run_id = tracker.existing_trials().get(trial_id)
        if run_id and tracker.client.get_run(run_id).info.status == "RUNNING":
            reason = f"stopped by ASHA after epoch {epoch} of {spec.base.epochs}"
            tracker.trial_ended(
                trial_id, status, reason if status == "stopped" else "", epoch or None
            )


def study_params(spec: SearchSpec) -> dict[str, Any]:
    params: dict[str, Any] = {f"search.{p.key}": _describe(p) for p in spec.params}
    t = spec.tune
    params.update({
        "tune.metric": t.metric, "tune.mode": t.mode, "tune.num_samples": t.num_samples,
        "tune.max_concurrent": t.max_concurrent or "auto", "tune.seed": t.seed,
        "tune.workers": t.resources.workers, "tune.cpu": t.resources.cpu, "tune.gpu": t.resources.gpu,
        "tune.scheduler": _scheduler_text(t.scheduler),
    })  # fmt: skip
    params["tune.sampler"] = t.sampler
    params["tune.baseline"] = t.baseline
    params["tune.finalists"] = (
        f"top {t.finalists.top}, seeds {t.finalists.seeds}" if t.finalists else "none"
    )
    if t.multi_objective:
        params["tune.metric"] = ", ".join(m for m, _ in t.goals)
        params["tune.mode"] = ", ".join(m for _, m in t.goals)
    return params


def _scheduler_text(scheduler: Any) -> str:
    if scheduler is None:
        return "none"
    if hasattr(scheduler, "mutate"):
        return (
            f"pbt(interval={scheduler.interval}, quantile={scheduler.quantile:g}, "
            f"resample={scheduler.resample:g}, mutate={','.join(scheduler.mutate)})"
        )
    return f"asha(grace={scheduler.grace_period}, rf={scheduler.reduction_factor})"


def _describe(param: Any) -> str:
    bounds = f"{list(param.choices)}" if param.kind == "choice" else f"[{param.low}, {param.high}]"
    return f"{param.kind} {bounds}" + (
        f" when {param.when.key} {param.when.op} {param.when.value}" if param.when else ""
    )


def study_records(tracker: Any, spec: SearchSpec, resume: bool) -> Any:
    """The experiment opens on its runs table (`raysl.tracking.view`); the parent gets the
    dataset as an input; returns the logger of each trial's dataset and config.yaml."""
    from raysl.tracking.inputs import RunInputs
    from raysl.tracking.view import prepare_experiment

    prepare_experiment(tracker.client, tracker.experiment_id, spec, tracker.parent_run_id)
    inputs = RunInputs(tracker.client)
    if not resume:
        inputs.log(tracker.parent_run_id, spec.base, name=None, context="study")
    return inputs
