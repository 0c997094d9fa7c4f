"""One study run the way the benchmarks run it: local Ray (the caller's session), Optuna,
MLflow in SQLite under a work directory, no live table; timed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def store_uri(work: Path) -> str:
    """The MLflow store of the studies run under `work`."""
    return f"sqlite:///{work}/mlflow.db"


def run_timed(spec: Any, work: Path) -> tuple[Path, str, Any, float]:
    """Run `spec` (a loaded SearchSpec) with its store and runs under `work`; returns the study
    directory, the MLflow parent run id, an MlflowClient on the store and the wall seconds."""
    from mlflow.tracking import MlflowClient

    from raysl.launch.ray_tune import run_study

    uri, out = store_uri(work), work / "runs" / spec.name
    started = time.perf_counter()
    run_study(spec, out, str(work / "runs"), uri, live=False)
    wall = time.perf_counter() - started
    parent = json.loads((out / "study.json").read_text())["parent_run_id"]
    return out, parent, MlflowClient(uri), wall
