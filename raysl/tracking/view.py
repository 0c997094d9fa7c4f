"""Where the MLflow UI opens on a study: the model-training runs table, with useful columns.

MLflow 3 (checked against 3.17's UI) picks an experiment's landing view from the experiment
tag `mlflow.experimentKind`: `genai_development` opens on the GenAI overview (traces, latency,
tokens), while `custom_model_development` opens on the runs table in the "Model training"
workflow. Without the tag the UI guesses, and the study opens on the GenAI overview. Each study
sets the tag on its experiment (`prepare_experiment`).

The runs table's columns are a view state the UI keeps per browser; the UI's "Share" button
stores one as the experiment tag `mlflow.sharedViewState.<key>` and links to it with
`?viewStateShareKey=<key>`. raysl stores such a view, key `raysl-trials`: the searched params,
the study metric, `raysl.status` and `raysl.stopped_at_epoch`, the Dataset and Models columns; in the chart view a "Study" section
first, with the metric per epoch and a parallel-coordinates chart of the searched params
against it (MLflow adds its own chart per metric after it); `raysl ui` prints the link. MLflow shows it as a shared view the user can keep ("Override saved
view") or leave. Which rows are unfolded is not part of a shareable view (and a search filter
for the trials still lists their parent, folded), so a study's trials appear after a click on
the ⊞ next to its parent run.

An SQLite store new to MLflow gets an empty "Default" experiment (id 0) from MLflow itself;
when it is empty and was made with the study's experiment, it is deleted (restorable).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

logger = logging.getLogger(__name__)

KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"  # -> runs table, "Model training" workflow
VIEW_KEY = "raysl-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
_DEFAULT_WINDOW_MS = 120_000  # a Default experiment made this close before ours is MLflow's


def runs_view(metric: str, searched: Iterable[str]) -> dict[str, Any]:
    """The shared view state: columns (and their order), newest runs first, two charts."""
    searched = list(searched)
    columns = [
        "attributes.`Duration`",
        "tags.`raysl.status`",
        "tags.`raysl.stopped_at_epoch`",
        f"metrics.`{metric}`",
        *(f"params.`{key}`" for key in searched),
        "attributes.`Dataset`",
        "attributes.`Models`",
    ]
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": columns,
        "hideEmptyCharts": True,
        # the chart view: a "Study" section first, with the metric per epoch and the searched
        # params against the metric; MLflow appends its own chart per metric after it
        "runsHiddenMode": "SHOW_ALL",
        "isAccordionReordered": True,
        "compareRunSections": [
            {"uuid": "raysl-study", "name": "Study", "display": True, "isReordered": True,
             "deleted": False, "isGenerated": False},
        ],
        "compareRunCharts": [
            {"uuid": "raysl-curve", "type": "LINE", "metricKey": metric,
             "metricSectionId": "raysl-study",
             "runsCountToCompare": 100, "deleted": False, "isGenerated": False,
             "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
             "xAxisKey": "step", "selectedXAxisMetricKey": "", "useGlobalXaxisKey": False,
             "useGlobalLineSmoothing": False},
            {"uuid": "raysl-parallel", "type": "PARALLEL", "selectedParams": searched,
             "selectedMetrics": [metric], "metricSectionId": "raysl-study",
             "runsCountToCompare": 100,
             "showAllRuns": True, "deleted": False, "isGenerated": False},
        ],
    }  # fmt: skip


def prepare_experiment(client: Any, experiment_id: str, spec: Any, parent_run_id: str) -> None:
    """Tag the experiment so the UI opens on its runs table, store the trials view, and drop
    MLflow's empty Default experiment of a store made for this study. Never raises."""
    try:
        experiment = client.get_experiment(experiment_id)
        if KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
        view = runs_view(spec.tune.metric, [p.key for p in spec.params])
        client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view))
        _drop_empty_default(client, experiment)
    except Exception:
        logger.warning("could not set the MLflow UI's view of the experiment", exc_info=True)


def runs_table_url(base: str, experiment_id: str, view: bool = True) -> str:
    """`BASE/#/experiments/ID/runs?workflowType=machine_learning[&viewStateShareKey=...]`."""
    query = "workflowType=machine_learning"
    if view:
        query += f"&viewStateShareKey={quote(VIEW_KEY)}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_url(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run's page (`tab`: "", "model-metrics", "artifacts"), in the model-training workflow."""
    tail = f"/{tab}" if tab else ""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{tail}"
        "?workflowType=machine_learning"
    )


def compare_url(base: str, experiment_id: str, run_ids: Iterable[str]) -> str:
    """MLflow's compare page (params side by side, parallel coordinates, scatter) for runs."""
    runs = quote(json.dumps(list(run_ids)))
    experiments = quote(json.dumps([experiment_id]))
    return (
        f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"
        "&workflowType=machine_learning"
    )


def _drop_empty_default(client: Any, ours: Any) -> None:
    from mlflow.entities import ViewType

    if ours.experiment_id == "0":
        return
    try:
        default = client.get_experiment("0")
    except Exception:
        return
    if default.name != "Default" or default.lifecycle_stage != "active":
        return
    made_with_ours = (ours.creation_time or 0) - (default.creation_time or 0) >= 0
    made_with_ours &= (ours.creation_time or 0) - (default.creation_time or 0) < _DEFAULT_WINDOW_MS
    if not made_with_ours:
        return
    if client.search_runs(["0"], run_view_type=ViewType.ALL, max_results=1):
        return
    client.delete_experiment("0")
