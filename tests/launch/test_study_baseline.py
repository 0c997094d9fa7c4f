"""The baseline trial: real Ray, Optuna and MLflow on a tiny CPU study.

The base config runs as Optuna trial 0 with the base values of the searched keys, its MLflow
run is tagged `raysl.baseline=true`, and the gain the study reports (summary, parent metric
and tag) is the best trial's last value minus the baseline's, as MLflow holds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.launch.test_ray_tune import run_and_read, study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "baseline_study"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("baseline")
    space = study_file(tmp, name=NAME, num_samples=4, scheduler="none")
    doc = yaml.safe_load(space.read_text())
    doc["config"]["epochs"] = 2
    doc["config"]["loss"]["infonce"]["temperature"] = 0.3  # base values the baseline must carry
    doc["config"]["optim"]["lr"] = 0.2
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    return run_and_read(tmp, space, NAME)


def test_the_baseline_is_trial_0_with_the_base_values(study: dict) -> None:
    first = study["optuna"].trials[0]
    # supcon's weight is 0 in the base config, so its conditional temperature is not searched
    assert first.params == {
        "optim.lr": 0.2,
        "loss.infonce.temperature": 0.3,
        "loss.supcon.weight": 0.0,
    }
    assert first.user_attrs["raysl_baseline"] is True
    assert not any(t.user_attrs.get("raysl_baseline") for t in study["optuna"].trials[1:])
    tagged = [r for r in study["trials"] if r.data.tags.get("raysl.baseline") == "true"]
    assert len(tagged) == 1
    run = tagged[0]
    assert run.data.tags["raysl.optuna_trial"] == "0"
    assert float(run.data.params["optim.lr"]) == 0.2
    assert float(run.data.params["loss.infonce.temperature"]) == 0.3
    assert "loss.supcon.temperature" not in run.data.params
    assert study["parent"].data.tags["raysl.baseline_trial_id"] == run.data.tags["raysl.trial_id"]


def test_the_gain_is_best_minus_baseline(study: dict) -> None:
    trials, parent = study["trials"], study["parent"]
    base = next(r for r in trials if r.data.tags.get("raysl.baseline") == "true")
    completed = [r for r in trials if r.data.tags["raysl.status"] == "completed"]
    top = max(r.data.metrics["val/knn_top1"] for r in completed)
    gain = top - base.data.metrics["val/knn_top1"]
    assert study["board"][0]["val/knn_top1"] == top  # the winner: the best completed trial
    assert parent.data.metrics["study/gain_over_baseline"] == pytest.approx(gain, abs=1e-9)
    assert float(parent.data.tags["raysl.gain_over_baseline"]) == pytest.approx(gain, rel=1e-5)
    summary = parent.data.tags["raysl.summary"]
    for text in (study["stdout"], study["report"]):  # wrapped at words on a terminal
        assert summary in " ".join(text.split())
    if gain > 0:
        assert f"best beats the baseline #0 by +{gain:.2f}" in summary
        assert f"(val/knn_top1 {top:.2f} vs {base.data.metrics['val/knn_top1']:.2f})" in summary
    else:
        assert "no trial beats the baseline #0" in summary


def test_marked_in_the_leaderboards(study: dict) -> None:
    rows = study["board"]
    assert [r["number"] for r in rows if r["baseline"]] == [0]
    assert "trial #0 base completed" in study["stdout"]  # the live (quiet) lines
    for text in (study["stdout"], study["report"]):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("───")) + 1
        body = lines[start : start + len(rows)]
        marked = [line.split()[1] for line in body if line.split()[2] == "base"]
        assert marked == ["#0"], body
        assert "base: the baseline (the base config)" in text
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    path = client.download_artifacts(
        study["parent"].info.run_id, "leaderboard.json", str(study["out"] / "dl")
    )
    table = json.loads(Path(path).read_text())
    assert [row[1] for row in table["data"] if row[1].endswith(" base")] == ["#0 base"]
