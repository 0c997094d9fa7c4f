"""`StudyTracker`: an MLflow parent run per study and a nested child run per trial.

The tracker lives in the study's driver process and is called from Tune callbacks, possibly
from several threads; one lock serialises its MLflow calls. Every call names its run id
explicitly (`MlflowClient`), so nothing depends on mlflow's global active-run stack.
"""

from __future__ import annotations

import getpass
import logging
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from mlflow.exceptions import MlflowException

from raysl.errors import ConfigError, Problem
from raysl.tracking.batch import log_metrics, log_params, log_tags
from raysl.tracking.store import artifact_location, code_version, open_client, search_all
from raysl.yamlio import flatten, parse_value, unflatten

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

TRIAL_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
STUDY_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_END_TAGS = {"raysl.reason", "raysl.stopped_at_epoch"}


class StudyTracker:
    """One experiment per search space `experiment`, one parent run per study, a child per trial.

    Args:
        tracking_uri: from `resolve_tracking_uri`.
        experiment: the search space's `name`; created if needed.
        study_name: the parent run's name.
        description: shown as the run's (and a new experiment's) description in the UI.
        tags: extra tags for the parent and every trial (e.g. `raysl.method`).
        parent_run_id: continue this study's parent run (a resumed study) instead of
            creating one; it is set back to RUNNING.

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
    ) -> None:
        self.tracking_uri = tracking_uri
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

    # ---- the study ----------------------------------------------------------------------
    def log_study_params(self, params: Mapping[str, Any]) -> None:
        """Study-level params (search space, tune settings); nested mappings become dotted keys.

        Params are immutable: on a resumed study only new keys are logged, and a changed
        value is reported in the log, not raised.
        """
        with self._lock:
            log_params(self.client, self.parent_run_id, params, resumed=True)

    def existing_trials(self) -> dict[str, str]:
        """`{trial_id: child run id}` of the trials logged under this parent so far."""
        found: dict[str, str] = {}
        for run in self._children():
            trial_id = run.data.tags.get("raysl.trial_id")
            if trial_id and trial_id not in found:
                found[trial_id] = run.info.run_id
        return found

    # ---- trials -------------------------------------------------------------------------
    def trial_started(
        self,
        trial_id: str,
        trial_name: str,
        config: Mapping[str, Any],
        searched: Mapping[str, Any] | Iterable[str],
    ) -> str:
        """Create (or, for a trial seen before, reopen) the trial's child run; returns its id.

        `config` (dotted or nested) is logged once as params; `searched` names the keys
        the searcher chose (tag `raysl.searched`).
        """
        with self._lock:
            run_id = self._trials.get(trial_id)
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
                self.client.set_tag(run_id, "raysl.status", "running")
                stale = self.client.get_run(run_id).data.tags.keys() & _END_TAGS
                for key in stale:  # from the end of its previous attempt
                    self.client.delete_tag(run_id, key)
                log_params(self.client, run_id, config, resumed=True)
                return run_id
            run = self.client.create_run(
                self.experiment_id,
                run_name=trial_name,
                tags={
                    **self._common,
                    "mlflow.parentRunId": self.parent_run_id,
                    "raysl.kind": "trial",
                    "raysl.trial_id": trial_id,
                    "raysl.status": "running",
                    "raysl.searched": ",".join(sorted(searched)),
                },
            )
            run_id = run.info.run_id
            self._trials[trial_id] = run_id
            log_params(self.client, run_id, config, resumed=False)
            return run_id

    def trial_result(self, trial_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log every numeric metric at `step` (completed epochs); `epoch` is added if absent."""
        with self._lock:
            run_id = self._run_of(trial_id)
            self._last_step[trial_id] = max(step, self._last_step.get(trial_id, step))
            values = {**metrics} if "epoch" in metrics else {**metrics, "epoch": step}
            log_metrics(self.client, run_id, values, step)

    def trial_ended(
        self,
        trial_id: str,
        status: Literal["completed", "stopped", "failed"],
        reason: str = "",
        stopped_at_epoch: int | None = None,
        summary: Mapping[str, float] | None = None,
    ) -> None:
        """End the child run: completed -> FINISHED, stopped (early) -> KILLED, failed -> FAILED."""
        if status not in TRIAL_STATUS:
            raise ValueError(f"status must be one of {', '.join(TRIAL_STATUS)} (got {status!r})")
        with self._lock:
            run_id = self._run_of(trial_id)
            tags = {"raysl.status": status}
            if reason:
                tags["raysl.reason"] = _last_line(reason) if status == "failed" else reason
            if status == "stopped":
                epoch = (
                    stopped_at_epoch
                    if stopped_at_epoch is not None
                    else self._last_step.get(trial_id)
                )
                if epoch is not None:
                    tags["raysl.stopped_at_epoch"] = str(epoch)
            log_tags(self.client, run_id, tags)
            if summary:
                log_metrics(self.client, run_id, summary, self._last_step.get(trial_id, 0))
            self.client.set_terminated(run_id, TRIAL_STATUS[status])

    # ---- the end --------------------------------------------------------------------------
    def study_ended(
        self,
        best: Mapping[str, Any] | None,
        status: Literal["completed", "failed", "interrupted"],
        best_checkpoint: Path | None = None,
        optuna_study: optuna.Study | None = None,
    ) -> None:
        """End the parent run with the best trial's metrics, config, checkpoint and Optuna plots.

        Args:
            best: `{"trial_id": str, "metrics": {name: value}, "config": {dotted or nested},
                "name": run-file name (optional)}`; `config` defaults to the best trial's params.
            status: completed -> FINISHED, failed -> FAILED, interrupted -> KILLED. Trials still
                RUNNING are ended KILLED with `raysl.status=interrupted`.
        """
        if status not in STUDY_STATUS:
            raise ValueError(f"status must be one of {', '.join(STUDY_STATUS)} (got {status!r})")
        with tempfile.TemporaryDirectory(prefix="raysl-study-") as tmp:
            plots = Path(tmp) / "plots"
            if optuna_study is not None:
                from raysl.tracking.plots import write_optuna_plots

                _guard("Optuna plots", write_optuna_plots, optuna_study, plots)
            with self._lock:
                pid = self.parent_run_id
                self._close_running_trials(status)
                tags, metrics = {"raysl.status": status}, {}
                if best:
                    tags.update(self._mark_best(best))
                    metrics = {f"best/{k}": v for k, v in (best.get("metrics") or {}).items()}
                    _guard("best_config.yaml", self._log_best_config, best, Path(tmp))
                if best_checkpoint is not None:
                    tags["raysl.best_checkpoint"] = str(best_checkpoint)
                    _guard("the best checkpoint", self._log_checkpoint, Path(best_checkpoint))
                if plots.is_dir() and any(plots.iterdir()):
                    _guard("Optuna plots", self.client.log_artifacts, pid, str(plots), "plots")
                log_tags(self.client, pid, tags)
                log_metrics(self.client, pid, metrics, step=0)
                self.client.set_terminated(pid, STUDY_STATUS[status])

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

    def _children(self, running_only: bool = False) -> list[Any]:
        query = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
        if running_only:
            query += " and attributes.status = 'RUNNING'"
        return search_all(self.client, self.experiment_id, query)

    def _run_of(self, trial_id: str) -> str:
        try:
            return self._trials[trial_id]
        except KeyError:
            raise KeyError(
                f"trial {trial_id!r} was not started (call trial_started first)"
            ) from None

    def _close_running_trials(self, status: str) -> None:
        """End the trial runs still RUNNING. After a completed study these are trials Tune
        lost: started just before a killed driver's last experiment snapshot, so the resumed
        study ran others in their place. They stay visible, but not as trials of the study."""
        for run in self._children(running_only=True):
            if status == "completed":
                tags = {
                    "raysl.kind": "lost_trial",
                    "raysl.status": "lost",
                    "raysl.reason": "started just before the driver died and not in Tune's last "
                    "snapshot; the resumed study ran another trial in its place",
                }
            else:
                tags = {
                    "raysl.status": "interrupted",
                    "raysl.reason": f"the study ended ({status}) while it ran",
                }
            log_tags(self.client, run.info.run_id, tags)
            self.client.set_terminated(run.info.run_id, "KILLED")

    def _mark_best(self, best: Mapping[str, Any]) -> dict[str, str]:
        trial_id = best.get("trial_id")
        if not trial_id:
            return {}
        tags = {"raysl.best_trial_id": str(trial_id)}
        run_id = self._trials.get(str(trial_id))
        if run_id is not None:
            tags["raysl.best_run_id"] = run_id
            self.client.set_tag(run_id, "raysl.best", "true")
        return tags

    def _log_best_config(self, best: Mapping[str, Any], tmp: Path) -> None:
        config = best.get("config")
        if config is None:  # rebuild it from the best trial's params
            run_id = self._trials.get(str(best.get("trial_id")))
            if run_id is None:
                logger.warning(
                    "no config and no known trial for the best trial: no best_config.yaml"
                )
                return
            params = self.client.get_run(run_id).data.params
            config = {k: parse_value(v) for k, v in params.items()}
        doc = {
            "name": best.get("name") or f"{self.experiment}_best",
            "description": f"best trial {best.get('trial_id', '?')} of study {self.study_name}",
            "config": unflatten(flatten(config)),
        }
        path = tmp / "best_config.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        self.client.log_artifact(self.parent_run_id, str(path))

    def _log_checkpoint(self, path: Path) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.parent_run_id, str(path), "best_checkpoint")
        elif path.is_file():
            self.client.log_artifact(self.parent_run_id, str(path), "best_checkpoint")
        else:
            logger.warning("best checkpoint %s does not exist; not uploaded", path)


def _guard(what: str, fn: Any, *args: Any) -> None:
    """Artifacts are extras: a failure is logged and the study still ends cleanly."""
    try:
        fn(*args)
    except Exception:
        logger.warning("could not store %s", what, exc_info=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
