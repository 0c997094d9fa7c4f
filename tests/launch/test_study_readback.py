"""A finished study read back as a user would: MLflow (`mlflow.search_runs`) and Optuna's storage.

One real study (digits, tiny ConvNet, 3 epochs, ASHA stopping some trials after 1 or 2) run
with `raysl tune`; the tests check what the MLflow UI, optuna-dashboard and the leaderboard
show: names, tags, statuses, params, and that the three agree on every trial's value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.launch.test_ray_tune import study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "readback_study"
EPOCHS = 3
QUESTION = "does a little SupCon help InfoNCE on digits?"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("readback")
    space = study_file(tmp, name=NAME, num_samples=6)
    doc = yaml.safe_load(space.read_text())
    doc["config"]["data"] = {"source": "digits", "batch_size": 128}  # real images, no synthetic
    doc["config"]["epochs"] = EPOCHS
    header = f"# A tiny study for the read-back test.\n# Question: {QUESTION} More text.\n"
    space.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = tmp / "runs" / NAME
    proc = run_cli("tune", str(space), "--out", str(out), "--tracking-uri", uri, "-q", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]

    import mlflow

    from raysl.tracking.model import _fluent_uri

    with _fluent_uri(uri):  # set_tracking_uri exports MLFLOW_TRACKING_URI: not past this block
        runs = mlflow.search_runs(
            experiment_names=[NAME], output_format="list", max_results=1000
        )  # what the UI lists
    parent = next(r for r in runs if r.data.tags.get("raysl.kind") == "study")
    trials = [r for r in runs if r.data.tags.get("raysl.kind") == "trial"]
    state = json.loads((out / "study.json").read_text())
    from raysl.launch.optuna_search import load_optuna_study

    optuna_study = load_optuna_study(out, state["optuna_study"])
    board = json.loads((out / "leaderboard.json").read_text())
    return {
        "uri": uri, "out": out, "stdout": proc.stdout, "parent": parent, "trials": trials,
        "optuna": optuna_study, "board": board,
    }  # fmt: skip


def test_trial_names_tags_and_statuses(study: dict) -> None:
    trials, optuna_study = study["trials"], study["optuna"]
    assert len(trials) == 6 and len(optuna_study.trials) == 6
    statuses = {r.data.tags["raysl.status"] for r in trials}
    assert statuses == {"completed", "stopped"}, statuses  # ASHA stopped some, not all
    for run in trials:
        tags, number = run.data.tags, int(run.data.tags["raysl.optuna_trial"])
        ot = optuna_study.trials[number]
        status = tags["raysl.status"]
        assert run.info.status == "FINISHED"  # stopped trials are not shown as failures
        last = run.data.metrics["val/knn_top1"]
        if status == "completed":
            assert run.info.run_name == f"#{number} completed val {last:.1f}"
            assert ot.state.name == "COMPLETE" and ot.value == last
        else:
            epoch = int(tags["raysl.stopped_at_epoch"])
            assert run.info.run_name == f"#{number} stopped@{epoch} val {last:.1f}"
            assert ot.state.name == "PRUNED" and epoch < EPOCHS
        # links between Optuna and MLflow
        assert ot.user_attrs["mlflow_run_id"] == run.info.run_id
        assert ot.user_attrs["ray_trial_id"] == tags["raysl.trial_id"]
        note = tags["mlflow.note.content"]
        assert f"Trial #{number}" in note and status in note and "unweighted" in note
        assert "epoch" not in run.data.metrics  # the step is the epoch
    assert optuna_study.metric_names == ["val/knn_top1"]


def test_only_active_params(study: dict) -> None:
    for run in study["trials"]:
        params = run.data.params
        assert {"optim.lr", "loss.infonce.temperature", "data.batch_size", "model.width"} <= set(
            params
        )
        assert not any(k.startswith("data.synthetic.") for k in params)  # digits, not synthetic
        assert "data.download" not in params and "eval.probe_lr" not in params
        if float(params["loss.supcon.weight"]) == 0:
            assert "loss.supcon.temperature" not in params  # the term is off
            assert "loss.supcon.temperature" not in run.data.tags["raysl.searched"]
        else:
            assert "loss.supcon.temperature" in params


def test_optuna_mlflow_and_leaderboard_agree(study: dict) -> None:
    """For every trial: Optuna's intermediate values are MLflow's per-epoch values (the last
    epoch included, also for a trial ASHA stopped), and the leaderboard ranks by that value."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    board = {row["trial_id"]: row for row in study["board"]}
    for run in study["trials"]:
        ot = study["optuna"].trials[int(run.data.tags["raysl.optuna_trial"])]
        history = sorted(
            (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/knn_top1")
        )
        assert sorted(ot.intermediate_values.items()) == history
        last_step, last = history[-1]
        assert ot.intermediate_values[max(ot.intermediate_values)] == last
        row = board[run.data.tags["raysl.trial_id"]]
        assert row["val/knn_top1"] == last and row["epochs"] == last_step
        assert row["number"] == ot.number
        best_epoch, best = max(history, key=lambda h: (h[1], -h[0]))
        assert (row["best"], row["best_epoch"]) == (best, best_epoch)
        if run.data.tags["raysl.status"] == "stopped":
            assert last_step == int(run.data.tags["raysl.stopped_at_epoch"])
    ranks = [row["status"] for row in study["board"]]
    assert ranks == sorted(ranks, key=lambda s: s != "completed")  # full budget first


def test_parent_run(study: dict, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    parent, client = study["parent"], MlflowClient(study["uri"])
    tags = parent.data.tags
    counts = {s: sum(r["status"] == s for r in study["board"]) for s in ("completed", "stopped")}
    best = study["board"][0]
    summary = (
        f"6 trials: {counts['completed']} completed, {counts['stopped']} stopped; "
        f"best #{best['number']} {best['val/knn_top1']:.1f} % (val/knn_top1, last epoch)"
    )
    # then what the search gained over the baseline (trial #0, the base config)
    assert tags["raysl.summary"].startswith(summary + "; ")
    assert "the baseline #0" in tags["raysl.summary"].removeprefix(summary)
    assert tags["raysl.summary"] in " ".join(study["stdout"].split())  # wrapped at words
    assert (
        QUESTION in tags["mlflow.note.content"] and "More text" not in tags["mlflow.note.content"]
    )
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.note.content"].startswith(QUESTION)
    assert not [k for k in parent.data.metrics if k.startswith("best/")]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_trial.json", "leaderboard.json", "plots", "best_config.yaml"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/intermediate_values.png" in plots and not [p for p in plots if p.endswith("html")]
    down = Path(client.download_artifacts(parent.info.run_id, "leaderboard.json", str(tmp_path)))
    table = json.loads(down.read_text())
    assert table["columns"][:5] == ["#", "trial", "status", "val/knn_top1 last", "best (epoch)"]
    labels = [f"#{r['number']}" + (" base" if r["baseline"] else "") for r in study["board"]]
    assert [r[1] for r in table["data"]] == labels
    assert sum(r["baseline"] for r in study["board"]) == 1  # the base config, marked
    # the terminal's leaderboard lists the same trials in the same order
    lines = study["stdout"].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("───")) + 1
    printed = [line.split()[1] for line in lines[start : start + len(study["board"])]]
    assert printed == [f"#{r['number']}" for r in study["board"]]
