"""MLflow tracking of studies: where the store is, the tracker, and the leaderboard.

Layout in MLflow (one experiment per search-space `name`):

- parent run per study (run name = study name; tags `raysl.kind=study`, `raysl.status`,
  `raysl.best_trial_id`, `raysl.best_run_id`, `raysl.code_version`); metrics `best/<metric>`;
  artifacts `best_config.yaml`, `best_checkpoint/`, `plots/<plot>.html|.png`.
- child run per trial (tag `mlflow.parentRunId`; `raysl.kind=trial`, `raysl.trial_id`,
  `raysl.status` running/completed/stopped/failed/interrupted, `raysl.searched`,
  `raysl.stopped_at_epoch`, `raysl.reason`, `raysl.code_version`); params = the trial's full
  dotted config; metrics per epoch (step = completed epochs).

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
