"""Population Based Training over loss weights and lr, on real Ray, with real MLflow: exploits
are recorded in each trial's lineage, and the winner's schedule file replays it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, run_cli

EPOCHS = 5
MUTATE = ["optim.lr", "loss.icc.weight"]


def pbt_file(tmp: Path, name: str = "pbt_study", **tune: object) -> Path:
    from raysl.yamlio import unflatten

    config = {
        **TINY, "epochs": EPOCHS, "eval.test": False, "loss.infonce.weight": 1.0,
        "loss.icc.weight": 0.3,
    }  # fmt: skip
    doc = {
        "name": name,
        "config": unflatten(config),
        "search": {
            "optim.lr": {"loguniform": [0.01, 1.0]},
            "loss.icc.weight": {"loguniform": [0.05, 1.0]},
            "loss.infonce.temperature": {"loguniform": [0.05, 0.5]},
        },
        "tune": {
            "num_samples": 4,
            "max_concurrent": 4,
            "resources": {"cpu": 0.5},
            "scheduler": {"pbt": {"interval": 1, "quantile": 0.25, "mutate": MUTATE}},
            "seed": 0,
            **tune,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _epochs(metrics_jsonl: Path) -> list[dict]:
    records = [json.loads(line) for line in metrics_jsonl.read_text().splitlines()]
    return [r for r in records if r.get("event") == "epoch"]


@pytest.mark.slow
@pytest.mark.ray
def test_pbt_exploits_and_the_winner_replays_exactly(tmp_path: Path) -> None:
    space = pbt_file(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "runs" / "pbt_study"
    proc = run_cli("tune", str(space), "--out", str(out), "--tracking-uri", uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continues from #" in proc.stdout and "replay it: raysl train" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pbt_study")
    trials = client.search_runs([experiment.experiment_id], "tags.`raysl.kind` = 'trial'")
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    lineages = {}
    for run in trials:
        path = client.download_artifacts(run.info.run_id, "lineage.json", str(tmp_path))
        lineages[run.data.tags["raysl.optuna_trial"]] = record = json.loads(Path(path).read_text())
        first = record["lineage"][0]
        assert first["epoch"] == 0 and set(first["values"]) == set(MUTATE)
        assert int(run.data.tags["raysl.pbt_exploits"]) == sum(
            "from" in e for e in record["lineage"]
        )
        assert len(record["history"]) == EPOCHS
    exploited = [r for r in lineages.values() if any("from" in e for e in r["lineage"])]
    assert exploited, "no trial exploited another in 5 epochs at interval 1"
    for record in exploited:
        for entry in record["lineage"][1:]:
            assert 1 <= entry["epoch"] < EPOCHS and set(entry["values"]) <= set(MUTATE)
    # the initial population: the baseline (base config values) is member #0
    members = {r.data.tags["raysl.optuna_trial"]: r for r in trials}
    assert float(members["0"].data.params["optim.lr"]) == TINY["optim.lr"]

    # the winner's file replays it: every epoch's kNN and loss to float noise
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert set(best["config"]["schedule"]) == set(MUTATE)
    parent = client.search_runs([experiment.experiment_id], "tags.`raysl.kind` = 'study'")[0]
    best_run = client.get_run(parent.data.tags["raysl.best_run_id"])
    assert best_run.data.tags["raysl.pbt_lineage"] == parent.data.tags["raysl.pbt_lineage"]
    winner = lineages[best_run.data.tags["raysl.optuna_trial"]]
    summary = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "pbt_lineage.json", str(tmp_path))
        ).read_text()
    )
    assert sorted(summary) == ["#0", "#1", "#2", "#3"]
    assert sum(line != "no exploit" for line in summary.values()) == len(exploited)
    to_replay = [(out / "best_config.yaml", winner)]
    if winner not in exploited:  # replay an exploited trial too, from its lineage
        from raysl.launch.pbt import replay_file
        from raysl.runfile import run_file_text

        other = tmp_path / "exploited.yaml"
        other.write_text(run_file_text("exploited", "", replay_file(exploited[0])))
        to_replay.append((other, exploited[0]))
    for i, (path, record) in enumerate(to_replay):
        run_dir = tmp_path / f"replay{i}"
        threads = str(record["threads"])  # the trial's (Ray: its CPUs, rounded up)
        assert f"OMP_NUM_THREADS={threads}" in best["description"]
        proc = run_cli(
            "train", str(path), "--out", str(run_dir), cwd=tmp_path,
            env={"OMP_NUM_THREADS": threads},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        replayed = _epochs(run_dir / "metrics.jsonl")
        assert len(replayed) == EPOCHS
        for ours, theirs in zip(replayed, record["history"], strict=True):
            for key in ("val/knn_top1", "train/loss", "train/loss/icc", "lr", "train/weight/icc"):
                assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours["epoch"])


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"scheduler": {"pbt": {"interval": 1, "mutate": ["model.proj_dim"]}}}, "mutate", "shape"),
        (
            {"scheduler": {"pbt": {"interval": 1, "mutate": ["eval.knn_k"]}}},
            "mutate",
            "not applied",
        ),
        ({"scheduler": {"pbt": {"interval": 1, "mutate": ["optim.momentum"]}}}, "mutate", "not"),
        ({"scheduler": {"pbt": {"interval": 9, "mutate": MUTATE}}}, "interval", "no trial would"),
        ({"scheduler": {"pbt": {"interval": 1, "mutate": "optim.lr"}}}, "mutate", "list"),
        ({"resources": {"cpu": 1, "workers": 2}}, "tune.resources.workers", "one worker"),
        ({"num_samples": 2}, "quantile", "at least 4"),
    ],
)
def test_bad_pbt_settings_exit_2_with_one_line_before_ray(
    tmp_path: Path, change: dict, key: str, words: str
) -> None:
    path = pbt_file(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["tune"].update(change)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = run_cli("tune", str(path), "--out", str(tmp_path / "x"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert key in lines[0] and words in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_weight_that_can_start_at_zero_is_refused(tmp_path: Path) -> None:
    path = pbt_file(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["search"]["loss.icc.weight"] = {"uniform": [0.0, 1.0]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = run_cli("tune", str(path), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "search.loss.icc.weight" in proc.stderr
    assert "values > 0" in proc.stderr and not (tmp_path / "x").exists()


def test_a_malformed_schedule_exits_2_naming_the_key(tiny_config) -> None:
    path = tiny_config(**{"schedule": {"model.proj_dim": [[0, 64]]}})
    proc = run_cli("train", str(path), "--out", str(path.parent / "y"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "schedule" in lines[0] and "model.proj_dim" in lines[0] and "shape" in lines[0]
    assert not (path.parent / "y").exists()
