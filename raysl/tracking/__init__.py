"""MLflow tracking of studies: where the store is, the tracker, and the leaderboard.

Layout in MLflow (one experiment per search-space `name`):

- parent run per study (run name = study name; description = the study's question and
  summary; tags `raysl.kind=study`, `raysl.status`, `raysl.summary`, `raysl.best_trial_id`,
  `raysl.best_run_id`, `raysl.code_version`); artifacts `leaderboard.json` (a `log_table`),
  `best_trial.json`, `best_config.yaml`, `best_checkpoint/`, `plots/<plot>.png`; system
  metrics where psutil is installed.
- child run per trial, named `#<Optuna number> <status> val <value>` (tag
  `mlflow.parentRunId`; `raysl.kind=trial`, `raysl.trial_id`, `raysl.optuna_trial`,
  `raysl.status` running/completed/stopped/failed/interrupted, `raysl.searched`,
  `raysl.epochs`, `raysl.stopped_at_epoch`, `raysl.best_value`, `raysl.best_epoch`,
  `raysl.reason`, `raysl.code_version`; a description); params = the dotted config keys that
  can affect it (`raysl.tracking.params`); metrics per epoch (step = completed epochs).
  Completed and ASHA-stopped trials end FINISHED, failed ones FAILED. The baseline trial is
  tagged `raysl.baseline=true`; finalists' re-runs are children too (`raysl.kind=finalist`,
  `raysl.finalist_of`, `raysl.seed`); a multi-objective study's front trials
  `raysl.pareto=true` (`raysl.tracking.outcome`, `raysl.tracking.pareto`).
- each trial and the parent have the dataset as an MLflow input, each trial its config as
  `config.yaml` (`raysl.tracking.inputs`); a completed study's parent gets the winner's
  test-split metrics `test/*`, the logged model `encoder` and, with `tune.register`, a
  registered-model version (`raysl.tracking.model`); the experiment opens on its runs table
  with raysl's view of the trials (`raysl.tracking.view`).

`raysl.tracking.store` imports no mlflow at module level; the rest is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raysl.tracking.store import code_version, resolve_tracking_uri

if TYPE_CHECKING:
    from raysl.tracking.ranking import (
        Study,
        leaderboard,
        newest_study,
        rank_trials,
        write_leaderboard,
    )
    from raysl.tracking.tracker import StudyTracker

_LAZY = {
    "StudyTracker": "raysl.tracking.tracker",
    "Study": "raysl.tracking.ranking",
    "leaderboard": "raysl.tracking.ranking",
    "newest_study": "raysl.tracking.ranking",
    "rank_trials": "raysl.tracking.ranking",
    "write_leaderboard": "raysl.tracking.ranking",
}

__all__ = [
    "Study",
    "StudyTracker",
    "code_version",
    "leaderboard",
    "newest_study",
    "rank_trials",
    "resolve_tracking_uri",
    "write_leaderboard",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raysl.tracking' has no attribute {name!r}")
