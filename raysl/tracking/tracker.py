"""`StudyTracker`: an MLflow parent run per study and a nested child run per trial.

This module opens (or continues) the experiment and the parent run and ends the study; the
trial runs are `raysl.tracking.trial_runs.TrialRuns`, the end-of-study artifacts
`raysl.tracking.study_artifacts.StudyArtifacts` (mixins of `StudyTracker`). The tracker lives in the study's driver process and is called from Tune callbacks, possibly
from several threads; one lock serialises its MLflow calls. Every call names its run id
explicitly (`MlflowClient`), so nothing depends on mlflow's global active-run stack.
"""

from __future__ import annotations

import getpass
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlflow.exceptions import MlflowException

from raysl.errors import ConfigError, Problem
from raysl.tracking.batch import log_params, log_tags
from raysl.tracking.store import artifact_location, code_version, open_client
from raysl.tracking.study_artifacts import StudyArtifacts, guard, summary_note
from raysl.tracking.trial_end import system_monitor
from raysl.tracking.trial_runs import TrialRuns

if TYPE_CHECKING:
    import optuna

STUDY_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class StudyTracker(TrialRuns, StudyArtifacts):
    """One experiment per search space `experiment`, one parent run per study, a child per trial.

    Args:
        tracking_uri: from `resolve_tracking_uri`.
        experiment: the search space's `name`; created if needed.
        study_name: the parent run's name.
        description: shown as the run's (and a new experiment's) description in the UI.
        tags: extra tags for the parent and every trial (e.g. `raysl.method`).
        parent_run_id: continue this study's parent run (a resumed study) instead of
            creating one; it is set back to RUNNING.
        metric, mode: the study's metric: trial run names, descriptions and the best epoch
            value of each trial (tags `raysl.best_value`, `raysl.best_epoch`) use it.
        system_metrics: sample the machine's CPU, memory, disk and network (GPU where
            pynvml is installed) into the parent run with MLflow's system-metrics monitor
            (needs psutil), one driver thread for the whole study.

    Raises:
        ConfigError: unreachable server, deleted experiment, unknown or foreign parent run.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        study_name: str,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        metric: str | None = None,
        mode: str = "max",
        system_metrics: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.metric, self.mode = metric, mode
        self.experiment = experiment
        self.study_name = study_name
        self.client = open_client(tracking_uri)
        self._lock = threading.RLock()
        self._last_step: dict[str, int] = {}
        version, commit = code_version()
        self._common = {
            **{str(k): str(v) for k, v in (tags or {}).items()},
            "raysl.study": study_name,
            "raysl.code_version": version,
            "mlflow.user": _user(),
            "mlflow.source.name": "raysl",
            "mlflow.source.type": "LOCAL",
            **({"mlflow.source.git.commit": commit} if commit else {}),
        }
        self.experiment_id = self._experiment(description)
        if parent_run_id:
            self.parent_run_id = self._continue(parent_run_id)
        else:
            note = {"mlflow.note.content": description} if description else {}
            run = self.client.create_run(
                self.experiment_id,
                run_name=study_name,
                tags={**self._common, **note, "raysl.kind": "study", "raysl.status": "running"},
            )
            self.parent_run_id = run.info.run_id
        self._trials = self.existing_trials()
        self._about: dict[str, dict[str, Any]] = {}  # trial id -> number, searched (descriptions)
        self._monitor = (
            system_monitor(self.parent_run_id, tracking_uri, resume=bool(parent_run_id))
            if system_metrics
            else None
        )

    # ---- the study ----------------------------------------------------------------------
    def log_study_params(self, params: Mapping[str, Any]) -> None:
        """Study-level params (search space, tune settings); nested mappings become dotted keys.

        Params are immutable: on a resumed study only new keys are logged, and a changed
        value is reported in the log, not raised.
        """
        with self._lock:
            log_params(self.client, self.parent_run_id, params, resumed=True)

    def set_study_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags on the parent run only (e.g. `raysl.search_order`)."""
        with self._lock:
            log_tags(self.client, self.parent_run_id, tags)

    # ---- the end --------------------------------------------------------------------------
    def study_ended(
        self,
        best: Mapping[str, Any] | None,
        status: Literal["completed", "failed", "interrupted"],
        best_checkpoint: Path | None = None,
        optuna_study: optuna.Study | None = None,
        leaderboard: Mapping[str, list[Any]] | None = None,
        summary: str = "",
    ) -> None:
        """End the parent run with the best trial's metrics, config, checkpoint and Optuna plots.

        Args:
            best: `{"trial_id": str, "metrics": {name: value}, "config": {dotted or nested},
                "name": run-file name (optional)}`; `config` defaults to the best trial's params.
                Its metrics go to the artifact `best_trial.json` (not metrics: a one-point
                `best/*` series per metric would fill the parent's charts).
            status: completed -> FINISHED, failed -> FAILED, interrupted -> KILLED. Trials still
                RUNNING are ended KILLED with `raysl.status=interrupted`.
            leaderboard: columns (`raysl.tracking.board.records`), logged with
                `log_table` as `leaderboard.json` (the run's Artifacts and Evaluation views).
            summary: one line (`8 trials: 3 completed, 5 stopped; best #3 97.9 %`): the tag
                `raysl.summary` and the first line of the parent's description.
        """
        if status not in STUDY_STATUS:
            raise ValueError(f"status must be one of {', '.join(STUDY_STATUS)} (got {status!r})")
        with tempfile.TemporaryDirectory(prefix="raysl-study-") as tmp:
            plots = Path(tmp) / "plots"
            if optuna_study is not None:
                from raysl.tracking.plots import write_optuna_plots

                guard("Optuna plots", write_optuna_plots, optuna_study, plots, self.metric)
            with self._lock:
                pid = self.parent_run_id
                self._close_running_trials(status)
                tags: dict[str, Any] = {"raysl.status": status}
                if best:
                    tags.update(self._mark_best(best))
                    guard("best_trial.json", self._log_best_trial, best, Path(tmp))
                    guard("best_config.yaml", self._log_best_config, best, Path(tmp))
                if leaderboard:
                    guard("the leaderboard", self._log_leaderboard, leaderboard)
                if summary:
                    tags["raysl.summary"] = summary
                    note = self.client.get_run(pid).data.tags.get("mlflow.note.content", "")
                    tags["mlflow.note.content"] = summary_note(note, summary)
                if best_checkpoint is not None:
                    tags["raysl.best_checkpoint"] = str(best_checkpoint)
                    guard("the best checkpoint", self._log_checkpoint, Path(best_checkpoint))
                if plots.is_dir() and any(plots.iterdir()):
                    guard("Optuna plots", self.client.log_artifacts, pid, str(plots), "plots")
                log_tags(self.client, pid, tags)
                if self._monitor is not None:
                    guard("system metrics", self._monitor.finish)
                    self._monitor = None
                self.client.set_terminated(pid, STUDY_STATUS[status])

    def close_running_trials(self, status: Literal["completed", "failed", "interrupted"]) -> None:
        """End the trial runs still RUNNING (see `_close_running_trials`); `study_ended` does it
        too, so call this first only to rank the trials before the study ends."""
        with self._lock:
            self._close_running_trials(status)

    def study(self) -> Any:
        """This study as `raysl.tracking.ranking.Study` (parent run and trial runs, as stored)."""
        from raysl.tracking.ranking import Study

        with self._lock:
            children = self._children()
            kinds = [r.data.tags.get("raysl.kind") for r in children]
            trials = [r for r, kind in zip(children, kinds, strict=True) if kind == "trial"]
            finalists = [r for r, kind in zip(children, kinds, strict=True) if kind == "finalist"]
            parent = self.client.get_run(self.parent_run_id)
            return Study(self.experiment, parent, trials, finalists)

    def log_study_metrics(self, metrics: Mapping[str, float]) -> None:
        """One-point metrics on the parent run (e.g. `study/gain_over_baseline`)."""
        from raysl.tracking.batch import log_metrics

        with self._lock:
            log_metrics(self.client, self.parent_run_id, metrics, 0)

    # ---- helpers --------------------------------------------------------------------------
    def _experiment(self, description: str) -> str:
        name = self.experiment
        found = self.client.get_experiment_by_name(name)
        if found is None:
            tags = {"mlflow.note.content": description} if description else None
            try:
                return self.client.create_experiment(
                    name, artifact_location=artifact_location(self.tracking_uri, name), tags=tags
                )
            except MlflowException as error:  # created meanwhile by another process
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(name)
        current = found.tags.get("mlflow.note.content")
        if found.lifecycle_stage == "active" and description and current != description:
            self.client.set_experiment_tag(found.experiment_id, "mlflow.note.content", description)
        if found.lifecycle_stage != "active":
            raise ConfigError(
                Problem(
                    f"MLflow experiment {name!r} is deleted in {self.tracking_uri}; restore it in "
                    "the MLflow UI, remove it for good with `mlflow gc`, or rename the search space",
                    key="name",
                )
            )
        return found.experiment_id

    def _continue(self, run_id: str) -> str:
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise ConfigError(
                Problem(f"no MLflow run {run_id} in {self.tracking_uri}", key="parent_run_id")
            ) from None
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            raise ConfigError(
                Problem(
                    f"MLflow run {run_id} is not an active run of experiment {self.experiment!r}",
                    key="parent_run_id",
                )
            )
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "raysl.status", "running")
        return run_id


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
