"""ASHA over epochs, which never stops the study's baseline trial.

ASHA (Li et al., 2020, "A System for Massively Parallel Hyperparameter Tuning") stops a trial
at a rung when its metric is not in the top 1/eta of the trials seen there. raysl's baseline
trial (`tune.baseline`, the base config) is the reference every other trial is judged by:
`study/gain_over_baseline` compares the winner's value at the full budget with the
baseline's, and the finalists re-run the baseline with their seeds only if it ran its budget.
A baseline cut at epoch 2 would give a gain of "epoch 4 against epoch 2", not like with like,
and no seeded baseline. So here ASHA sees the baseline's results (it counts in every rung, as
in Ray's ASHA) but never stops it; it costs at most `max_t - grace_period` epochs, once.

Deliberate difference from Ray's `ASHAScheduler`: that one exception; everything else is
Ray's (`ray.tune.schedulers.AsyncHyperBandScheduler`).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


class BaselineASHA(AsyncHyperBandScheduler):
    """Ray's ASHA, except that the trial the study's searcher marks as the baseline
    (`StudySearch.is_baseline`, found through `SEARCHERS[key]`: a name, so the scheduler
    pickles with the Tuner and finds the searcher again after a driver restart) is never
    stopped before `max_t`."""

    def __init__(self, *args: Any, searcher_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.searcher_key = searcher_key

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and self._spares(trial, result):
            self._num_stopped -= 1  # Ray counted it as stopped
            return TrialScheduler.CONTINUE
        return action

    def _spares(self, trial: Any, result: dict) -> bool:
        """Whether `trial` is the baseline and has not reached `max_t` yet."""
        from raysl.launch.optuna_search import SEARCHERS

        if result.get(self._time_attr, 0) >= self._max_t:
            return False  # the end of its budget: stopping it is finishing it
        searcher = SEARCHERS.get(self.searcher_key) if self.searcher_key else None
        return bool(searcher is not None and searcher.is_baseline(trial.trial_id))


def asha_scheduler(spec: Any, searcher_key: str | None) -> BaselineASHA:
    """ASHA over epochs (one Tune report per epoch) for `spec` (a `SearchSpec` whose
    scheduler is `Asha`); with `tune.baseline`, its baseline runs every epoch."""
    asha = spec.tune.scheduler
    return BaselineASHA(
        time_attr="training_iteration",  # one report per epoch: rungs in epochs
        max_t=spec.base.epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
        searcher_key=searcher_key if spec.tune.baseline else None,
    )
