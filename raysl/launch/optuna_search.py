"""Optuna as the study's searcher: Ray Tune's `OptunaSearch`, told the truth about each trial.

`StudySearch` differs from Ray's `OptunaSearch` in four ways:

- **Every epoch reaches Optuna, the last one included.** Ray's TuneController does not pass
  the result that stops a trial (ASHA's decision, and the last epoch of a full-budget trial,
  which ASHA also answers with STOP at `max_t`) to the searcher's `on_trial_result`; it goes to
  `on_trial_complete` only. That result is reported to the Optuna trial before it is told, so
  Optuna's last intermediate value is the value MLflow and the leaderboard show.
- **Trials ASHA stopped before their last epoch are PRUNED, not COMPLETE.** Ray tells a trial's
  last value as its final one, so TPE would treat a trial stopped at epoch 2 as if its early kNN
  were what it achieves; as PRUNED (value: its last intermediate value), TPE ranks it below
  every complete trial and keeps its learning curve.
- **Intermediate values are stepped by completed epochs** (`result["epoch"]`), the step MLflow
  uses, rather than Tune's `training_iteration`.
- **The objective is named** (`Study.set_metric_names`) and each Optuna trial carries user
  attributes `ray_trial_id` and, once its run exists, `mlflow_run_id`.
- **A trial the journal has finished is never updated again.** A driver killed between telling
  Optuna and saving Tune's experiment state resumes with that trial still running in Tune's
  eyes; Tune re-runs it from its checkpoint, and its result, link and tell are then skipped
  (Optuna raises `UpdateFinishedTrialError` on any write to a finished trial).

The searcher is pickled into Tune's experiment state and restored with it; each instance
registers itself under its Optuna study name (`SEARCHERS`) when it suggests, so the driver's
callbacks find the live one after `Tuner.restore`.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

# Optuna study name -> the searcher that is suggesting its trials in this driver.
SEARCHERS: dict[str, StudySearch] = {}
BASELINE_ATTR = "raysl_baseline"  # Optuna user attribute of the baseline trial


class StudySearch(OptunaSearch):
    """See the module docstring."""

    def __init__(
        self, *args: Any, max_epochs: int, baseline: dict | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self._name_objective()
        if baseline is not None and self._ot_study is not None and not self._ot_study.trials:
            # the first trial asked for (Optuna trial 0): define-by-run suggestions return
            # these values (Ray's points_to_evaluate would enqueue them too, without the mark)
            self._ot_study.enqueue_trial(baseline, user_attrs={BASELINE_ATTR: True})

    def _name_objective(self) -> None:
        import optuna

        if self._ot_study is None or self.metric is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            names = [self.metric] if isinstance(self.metric, str) else list(self.metric)
            self._ot_study.set_metric_names(names)

    # ---- what the driver asks -----------------------------------------------------------
    def number(self, trial_id: str) -> int | None:
        """The Optuna trial number of Tune trial `trial_id` (None if it did not come from here)."""
        trial = self._ot_trials.get(trial_id)
        return None if trial is None else trial.number

    def is_baseline(self, trial_id: str) -> bool:
        """Whether Tune trial `trial_id` is the study's baseline (the enqueued base config)."""
        trial = self._ot_trials.get(trial_id)
        return trial is not None and bool(trial.user_attrs.get(BASELINE_ATTR))

    def link(self, trial_id: str, mlflow_run_id: str) -> None:
        """Store the trial's MLflow run id on its Optuna trial."""
        if self._open(trial_id):
            self._ot_trials[trial_id].set_user_attr("mlflow_run_id", mlflow_run_id)

    def _open(self, trial_id: str) -> bool:
        """Whether Tune trial `trial_id` has an Optuna trial that may still be written to."""
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials:
            return False
        if trial.storage.get_trial(trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # told before the driver died
            return False
        return True

    # ---- Tune's searcher interface ------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        SEARCHERS[self._study_name] = self  # the live instance, also after Tuner.restore
        params = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None:
            trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        SEARCHERS[self._study_name] = self  # trials restored mid-run start before any suggest

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._open(trial_id):
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if not self._open(trial_id):
            return
        if not error and result:
            self._report(trial_id, result)  # the result that stopped it never reached us
            if _epoch(result, self.max_epochs) < self.max_epochs:
                import optuna

                try:
                    self._ot_study.tell(
                        self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED
                    )
                except Exception as exc:  # e.g. told already by a study that resumed
                    logger.warning("Optuna: %s", exc)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)

    def _report(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        trial = self._ot_trials[trial_id]
        step = _epoch(result, 0)
        if step in trial.storage.get_trial(trial._trial_id).intermediate_values:
            return  # reported by on_trial_result already
        if math.isfinite(value):
            trial.report(float(value), step)


def _epoch(result: dict, default: int) -> int:
    return int(result.get("epoch", result.get("training_iteration", default)))


def make_searcher(spec: Any, out: Path, study_name: str) -> StudySearch:
    """TPE (multivariate, grouped, constant liar, seeded) over `spec.sample`, stored in a
    journal; with `tune.baseline`, the base config (`spec.baseline()`) enqueued as trial 0.
    `tune.sampler: random`: Optuna's `RandomSampler`, seeded (random search)."""
    import optuna

    t = spec.tune
    baseline = None
    if t.baseline:
        params = {p.key: p for p in spec.params}
        baseline = {k: params[k].optuna_value(v) for k, v in spec.baseline().items()}
    with warnings.catch_warnings():  # multivariate, group: "experimental" since Optuna 2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if t.sampler == "random":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=t.seed)
        else:
            sampler = optuna.samplers.TPESampler(
                seed=spec.tune.seed,
                multivariate=True,
                group=True,  # conditional spaces: model each set of co-occurring params jointly
                constant_liar=True,  # concurrent trials do not all propose the same point
                n_startup_trials=spec.tune.startup_trials,
            )
        return StudySearch(
            space=spec.sample,
            # several objectives: Optuna's multi-objective TPE (directions from the modes)
            metric=[m for m, _ in t.goals] if t.multi_objective else t.metric,
            mode=[m for _, m in t.goals] if t.multi_objective else t.mode,
            sampler=sampler,
            study_name=study_name,
            storage=optuna_storage(out),
            max_epochs=spec.base.epochs,
            baseline=baseline,
        )


def optuna_storage(out: Path) -> Any:
    """The study's Optuna journal (`<out>/optuna.journal`)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna.journal")))


def load_optuna_study(out: Path, study_name: str) -> Any:
    """The Optuna study of `out`, or None if no trial was ever asked for."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=optuna_storage(out))
    except KeyError:
        return None
