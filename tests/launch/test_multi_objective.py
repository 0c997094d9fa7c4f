"""A two-objective study (val/knn_top1 max, cost/device_hours min): real Ray, Optuna, MLflow.

The Pareto front as printed (summary and leaderboard), as logged (the parent's tag and
leaderboard table, the trials' tags, the run files in `pareto/`) and as Optuna holds it is
the non-dominated set the test computes from the trials' logged last values; the cost metric
is the seconds inside `fit()` times the CPUs a trial reserves, every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.launch.test_ray_tune import run_and_read, study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "pareto_study"
GOALS = (("val/knn_top1", 1.0), ("cost/device_hours", -1.0))  # max, min


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("pareto")
    space = study_file(tmp, name=NAME, num_samples=5)
    doc = yaml.safe_load(space.read_text())
    doc["config"]["epochs"] = 2
    doc["tune"]["metric"] = ["val/knn_top1", "cost/device_hours"]
    doc["tune"]["mode"] = ["max", "min"]
    del doc["tune"]["scheduler"]  # none: a scheduler ranks by one metric
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    return run_and_read(tmp, space, NAME)


def non_dominated(trials: list) -> set[int]:
    """Optuna numbers of the completed trials no other one dominates (logged last values)."""
    points = {
        int(r.data.tags["raysl.optuna_trial"]): [s * r.data.metrics[m] for m, s in GOALS]
        for r in trials
        if r.data.tags["raysl.status"] == "completed"
    }

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return {n for n, p in points.items() if not any(dominates(q, p) for q in points.values())}


def table_body(text: str, rows: int) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("───")) + 1
    return [line.split() for line in lines[start : start + rows]]


def test_the_front_printed_and_logged_is_the_non_dominated_set(study: dict) -> None:
    trials, parent = study["trials"], study["parent"]
    assert len(trials) == 5 and all(r.data.tags["raysl.status"] == "completed" for r in trials)
    front = non_dominated(trials)
    labels = ", ".join(f"#{n}" for n in sorted(front, key=lambda n: _rank(study, n)))
    # printed: the summary and both leaderboards (front first, marked ★)
    summary = parent.data.tags["raysl.summary"]
    assert "Pareto front (val/knn_top1 max, cost/device_hours min): " + labels in summary
    for text in (study["stdout"], study["report"]):
        assert summary in " ".join(text.split())
        body = table_body(text, len(trials))
        marked = [int(cells[1][1:]) for cells in body if "★" in cells]
        assert set(marked) == front and [int(c[1][1:]) for c in body[: len(front)]] == marked
    # logged: the parent's tag and table, the trials' tags, the run files
    assert parent.data.tags["raysl.pareto_trials"] == labels.replace(" ", "")
    tagged = {
        int(r.data.tags["raysl.optuna_trial"]) for r in trials if r.data.tags.get("raysl.pareto")
    }
    assert tagged == front
    board = study["board"]
    assert {r["number"] for r in board if r["pareto"]} == front
    assert [r["pareto"] for r in board] == sorted((r["pareto"] for r in board), reverse=True)
    files = sorted(p.name for p in (study["out"] / "pareto").glob("*.yaml"))
    assert files == sorted(f"{NAME}_trial_{n}.yaml" for n in front)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "pareto" in artifacts and "best_config.yaml" not in artifacts  # no single winner
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")} == {
        f"pareto/{f}" for f in files
    }
    assert "plots/pareto_front.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    table = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "leaderboard.json", str(study["tmp"]))
        ).read_text()
    )
    column = table["columns"].index("Pareto")
    assert {int(r[1].split()[0][1:]) for r in table["data"] if r[column]} == front
    # Optuna: two named objectives, the same front
    optuna_study = study["optuna"]
    assert optuna_study.metric_names == ["val/knn_top1", "cost/device_hours"]
    assert {t.number for t in optuna_study.best_trials} == front


def _rank(study: dict, number: int) -> int:
    return next(r["rank"] for r in study["board"] if r["number"] == number)


def test_a_pareto_run_file_retrains_its_trial(study: dict) -> None:
    from raysl.runfile import load_run_file

    path = next((study["out"] / "pareto").glob("*.yaml"))
    number = int(path.stem.rsplit("_", 1)[1])
    row = next(r for r in study["board"] if r["number"] == number)
    run = load_run_file(path)
    assert run.config.optim.lr == pytest.approx(row["optim.lr"])
    assert run.config.loss.infonce.temperature == pytest.approx(row["loss.infonce.temperature"])


def test_cost_is_fit_seconds_times_cpus_every_epoch(study: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    for run in study["trials"]:
        cost = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, "cost/device_hours")
        }
        elapsed = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, "time/elapsed")
        }
        assert sorted(cost) == [1, 2] == sorted(elapsed)
        for step, seconds in elapsed.items():  # each trial reserves 1 CPU and no GPU
            assert cost[step] == pytest.approx(seconds * 1 / 3600, rel=1e-9)
        assert cost[2] > cost[1] > 0
