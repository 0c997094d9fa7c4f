"""A study's own files in `--out` and what the driver reads back from Tune's results: the
state (`study.json`: the MLflow parent run id, the Optuna study name), the leaderboard, the
best trial's checkpoint and config."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raysl.search import SearchSpec


def trial_config(
    spec: SearchSpec, statuses: Mapping[str, Any], row: Mapping[str, Any], searched: list[str]
) -> dict[str, Any]:
    """The config of the trial of leaderboard row `row` (its searched values as the driver
    saw them, else as MLflow holds them)."""
    values = (statuses.get(row["trial_id"]) or {}).get("searched") or {
        k: row[k] for k in searched if row.get(k) is not None
    }
    return spec.config_for(values).model_dump(exclude_none=True)


def best_checkpoint(results: Any, best: Mapping[str, Any]) -> Path | None:
    """The last checkpoint of the best trial among Tune's results (None if gone)."""
    for result in results:
        if (
            result.metrics
            and result.metrics.get("trial_id") == best["trial_id"]
            and result.checkpoint is not None
        ):
            path = Path(result.checkpoint.path)
            return path if path.exists() else None
    return None


def write_leaderboard(out: Path, rows: list[dict[str, Any]]) -> None:
    """`<out>/leaderboard.json`: the `rank_trials` rows, as `raysl report` writes them."""
    (out / "leaderboard.json").write_text(json.dumps(rows, indent=2, default=str))


def load_state(out: Path) -> dict[str, Any]:
    """`<out>/study.json` ({} when there is none)."""
    path = out / "study.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(out: Path, state: Mapping[str, Any]) -> None:
    """Write `<out>/study.json` atomically."""
    tmp = out / f".study.json.{uuid.uuid4().hex[:6]}"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / "study.json")
