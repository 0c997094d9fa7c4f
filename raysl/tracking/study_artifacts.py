"""What a study's parent run gets at its end: the best trial marked, `best_trial.json`,
`best_config.yaml`, the leaderboard table, the best checkpoint, and the summary line.

`StudyArtifacts` is a mixin of `StudyTracker` (`raysl.tracking.tracker`), called under its lock
from `study_ended`. Artifacts are extras: `guard` logs a failure and the study still ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raysl.yamlio import parse_value

logger = logging.getLogger(__name__)

SUMMARY_MARK = "**Summary:** "


class StudyArtifacts:
    """The parent run's end-of-study artifacts and tags."""

    client: Any  # MlflowClient
    experiment: str
    parent_run_id: str
    study_name: str
    metric: str | None
    _trials: dict[str, str]  # trial id -> run id
    _about: dict[str, dict[str, Any]]  # trial id -> number, searched

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

    def _log_best_trial(self, best: Mapping[str, Any], tmp: Path) -> None:
        trial_id = str(best.get("trial_id"))
        doc = {
            "trial_id": trial_id,
            "run_id": self._trials.get(trial_id),
            "optuna_trial": (self._about.get(trial_id) or {}).get("number"),
            "metric": self.metric,
            "metrics": dict(best.get("metrics") or {}),
        }
        path = tmp / "best_trial.json"
        path.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
        self.client.log_artifact(self.parent_run_id, str(path))

    def _log_leaderboard(self, columns: Mapping[str, list[Any]]) -> None:
        import pandas as pd

        self.client.log_table(self.parent_run_id, pd.DataFrame(dict(columns)), "leaderboard.json")

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
        from raysl.runfile import run_file_text

        description = best.get("description") or (
            f"best trial {best.get('trial_id', '?')} of study {self.study_name}"
        )
        text = run_file_text(best.get("name") or f"{self.experiment}_best", description, config)
        path = tmp / "best_config.yaml"
        path.write_text(text, encoding="utf-8")
        self.client.log_artifact(self.parent_run_id, str(path))

    def _log_checkpoint(self, path: Path) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.parent_run_id, str(path), "best_checkpoint")
        elif path.is_file():
            self.client.log_artifact(self.parent_run_id, str(path), "best_checkpoint")
        else:
            logger.warning("best checkpoint %s does not exist; not uploaded", path)


def summary_note(note: str, summary: str) -> str:
    """The parent's description with `summary` as its first line (replacing a resumed study's)."""
    old = note.split("\n\n", 1)
    if old and old[0].startswith(SUMMARY_MARK):  # a resumed study's
        note = old[1] if len(old) > 1 else ""
    return f"{SUMMARY_MARK}{summary}" + (f"\n\n{note}" if note else "")


def guard(what: str, fn: Any, *args: Any) -> None:
    """Artifacts are extras: a failure is logged and the study still ends cleanly."""
    try:
        fn(*args)
    except Exception:
        logger.warning("could not store %s", what, exc_info=True)
