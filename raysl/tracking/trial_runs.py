"""The per-trial half of `StudyTracker`: one nested MLflow child run per Tune trial.

`TrialRuns` is a mixin: `StudyTracker` (`raysl.tracking.tracker`) owns the client, the lock and
the parent run, and calls these from Tune callbacks. A trial seen before (a resumed study, a
retried trial) reopens its run; its end renames and describes it (`raysl.tracking.trial_end`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from raysl.tracking.batch import log_metrics, log_params, log_tags, logged_at
from raysl.tracking.describe import trial_note, trial_run_name
from raysl.tracking.params import relevant_params
from raysl.tracking.store import search_all
from raysl.tracking.trial_end import describe_end
from raysl.yamlio import flatten

# A trial ASHA stopped did what it was asked (it ran until the scheduler had seen enough), so it
# is FINISHED in MLflow, not KILLED (a red cross, as for a failure); `raysl.status` = stopped and
# `raysl.stopped_at_epoch` say it ran short, and the run name shows `stopped@<epoch>`.
TRIAL_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}
_END_TAGS = {"raysl.reason", "raysl.stopped_at_epoch", "raysl.best_value", "raysl.best_epoch"}


class TrialRuns:
    """Trial runs under `parent_run_id`: started, reported to, ended, closed with the study."""

    client: Any  # MlflowClient
    experiment_id: str
    parent_run_id: str
    study_name: str
    metric: str | None
    mode: str
    _common: dict[str, str]  # tags of every run of the study
    _lock: threading.RLock
    _trials: dict[str, str]  # trial id -> run id
    _about: dict[str, dict[str, Any]]  # trial id -> number, searched (descriptions)
    _last_step: dict[str, int]  # trial id -> completed epochs reported

    def existing_trials(self) -> dict[str, str]:
        """`{trial_id: child run id}` of the trials logged under this parent so far."""
        found: dict[str, str] = {}
        for run in self._children():
            trial_id = run.data.tags.get("raysl.trial_id")
            if trial_id and trial_id not in found:
                found[trial_id] = run.info.run_id
        return found

    def trial_started(
        self,
        trial_id: str,
        trial_name: str,
        config: Mapping[str, Any],
        searched: Mapping[str, Any] | Iterable[str],
        number: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create (or, for a trial seen before, reopen) the trial's child run; returns its id.

        `config` (dotted or nested) is logged once as params, without the keys that cannot
        affect the run (`raysl.tracking.params.relevant_params`; searched keys always stay);
        `searched` names the keys the searcher chose (tag `raysl.searched`), or maps them to
        their values (shown in the description). `number` is the Optuna trial number: the run
        is named `#<number> running` (`trial_name` without one) and tagged `raysl.optuna_trial`.
        `tags` are extra tags (`raysl.baseline`; a finalist's `raysl.kind=finalist`).
        """
        extra = dict(tags or {})
        values = dict(searched) if isinstance(searched, Mapping) else {}
        keys = sorted(searched)
        params = relevant_params(flatten(config), keys)
        with self._lock:
            run_id = self._trials.get(trial_id)
            if number is None and run_id is not None:  # a reopened trial keeps its number
                known = self.client.get_run(run_id).data.tags.get("raysl.optuna_trial")
                number = int(known) if known else None
            name = trial_run_name(number, "running", fallback=trial_name)
            self._about[trial_id] = {"number": number, "searched": values, "name": trial_name}
            note = trial_note(self.study_name, number, trial_id, values, "running")
            tags = {"raysl.status": "running", "mlflow.note.content": note, **(extra or {})}
            if number is not None:
                tags["raysl.optuna_trial"] = str(number)
            if self.metric:
                tags["raysl.metric"] = self.metric
            if run_id is not None:
                self.client.update_run(  # without a number: the name it has
                    run_id, status="RUNNING", name=name if number is not None else None
                )
                log_tags(self.client, run_id, tags)
                stale = self.client.get_run(run_id).data.tags.keys() & _END_TAGS
                for key in stale:  # from the end of its previous attempt
                    self.client.delete_tag(run_id, key)
                log_params(self.client, run_id, params, resumed=True)
                return run_id
            run = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={
                    **self._common,
                    **tags,
                    "mlflow.parentRunId": self.parent_run_id,
                    "raysl.kind": "trial",
                    "raysl.trial_id": trial_id,
                    "raysl.searched": ",".join(keys),
                    **(extra or {}),
                },
            )
            run_id = run.info.run_id
            self._trials[trial_id] = run_id
            log_params(self.client, run_id, params, resumed=False)
            return run_id

    def trial_result(
        self, trial_id: str, metrics: Mapping[str, float], step: int, again: bool = False
    ) -> None:
        """Log every numeric metric at `step` (completed epochs), with the tag `raysl.epochs`
        (the epochs run) in the same request. `epoch` is not logged: it is the step (a metric
        `epoch` would only repeat it in every chart). `again`: an earlier attempt failed and may
        have been applied (`raysl.tracking.outbox`), so metrics already at `step` stay as
        they are."""
        with self._lock:
            run_id = self._run_of(trial_id)
            self._last_step[trial_id] = max(step, self._last_step.get(trial_id, step))
            values = {k: v for k, v in metrics.items() if k != "epoch"}
            if again and logged_at(self.client, run_id, values, step):
                values = {}
            log_metrics(
                self.client, run_id, values, step, {"raysl.epochs": self._last_step[trial_id]}
            )

    def trial_result_again(self, trial_id: str, metrics: Mapping[str, float], step: int) -> None:
        """`trial_result` sent once more after a failed attempt (the outbox's `again`)."""
        self.trial_result(trial_id, metrics, step, again=True)

    def trial_ended(
        self,
        trial_id: str,
        status: Literal["completed", "stopped", "failed"],
        reason: str = "",
        stopped_at_epoch: int | None = None,
        summary: Mapping[str, float] | None = None,
    ) -> None:
        """End the child run: completed and stopped (early, by ASHA) -> FINISHED, failed ->
        FAILED; rename it (`#3 completed val 97.9`) and describe it (searched values, status,
        epochs, why it stopped, last and best value of the study's metric)."""
        if status not in TRIAL_STATUS:
            raise ValueError(f"status must be one of {', '.join(TRIAL_STATUS)} (got {status!r})")
        with self._lock:
            run_id = self._run_of(trial_id)
            tags: dict[str, Any] = {"raysl.status": status}
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
            about = {
                **(self._about.get(trial_id) or {}),
                "epochs": self._last_step.get(trial_id),
                "study": self.study_name,
            }
            reason = tags.get("raysl.reason", "")
            tags.update(
                describe_end(self.client, run_id, about, status, reason, self.metric, self.mode)
            )
            log_tags(self.client, run_id, tags)
            if summary:
                log_metrics(self.client, run_id, summary, self._last_step.get(trial_id, 0))
            self.client.set_terminated(run_id, TRIAL_STATUS[status])

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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""
