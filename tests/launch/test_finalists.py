"""Finalists: the K best full-budget trials re-run with S other seeds, through Ray, in MLflow.

Real Ray, Optuna and MLflow on a tiny CPU study (4 trials, top 2, seeds 2): exactly K x S
extra fits (and S more for the baseline trial when it is not in the top K), each the
original config with seed + 1 ... + S, as nested runs that the
leaderboard does not count as trials; the leaderboard ranks the finalists first by the mean
the test computes from MLflow (the original counts as one seed), and `best_config.yaml` is
the winner's config. A driver killed mid-finalists resumes without losing or repeating a fit.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.launch.test_ray_tune import study_file

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "finalist_study"
TOP, SEEDS, EPOCHS = 2, 2, 2


def finalist_space(tmp: Path, name: str) -> Path:
    """The tiny study (4 trials, no scheduler) with finalists: top TOP, SEEDS seeds."""
    space = study_file(tmp, name=name, num_samples=4, scheduler="none")
    doc = yaml.safe_load(space.read_text())
    doc["config"]["epochs"] = EPOCHS
    doc["tune"]["finalists"] = {"top": TOP, "seeds": SEEDS}
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    return space


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("finalists")
    space = finalist_space(tmp, NAME)
    uri = f"sqlite:///{tmp}/mlflow.db"
    out, storage = tmp / "runs" / NAME, tmp / "storage"
    proc = run_cli(
        "tune", str(space), "--out", str(out), "--storage", str(storage),
        "--tracking-uri", uri, "-q", cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_cli("report", NAME, "--tracking-uri", uri, "--out", str(tmp / "r"), cwd=tmp)
    assert report.returncode == 0, report.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    kinds: dict[str, list] = {}
    for run in runs:
        kinds.setdefault(run.data.tags.get("raysl.kind", ""), []).append(run)
    return {
        "client": client, "tmp": tmp, "out": out, "storage": storage, "stdout": proc.stdout,
        "report": report.stdout, "parent": kinds["study"][0], "trials": kinds["trial"],
        "finalists": kinds.get("finalist", []),
        "board": json.loads((out / "leaderboard.json").read_text()),
    }  # fmt: skip


def rerun_ids(trials: list) -> set[str]:
    """The top K completed trials by their last value, and the baseline trial (#0)."""
    completed = sorted(
        (r for r in trials if r.data.tags["raysl.status"] == "completed"),
        key=lambda r: (-r.data.metrics["val/knn_top1"], r.data.tags["raysl.trial_id"]),
    )
    top = {r.data.tags["raysl.trial_id"] for r in completed[:TOP]}
    base = [r for r in trials if r.data.tags.get("raysl.baseline") == "true"]
    assert len(base) == 1 and base[0].data.tags["raysl.optuna_trial"] == "0"
    return top | {base[0].data.tags["raysl.trial_id"]}


def test_exactly_k_times_s_fits_with_the_other_seeds(study: dict) -> None:
    trials, finalists = study["trials"], study["finalists"]
    top = rerun_ids(trials)  # K, or K + 1 when the baseline is not among them
    assert len(trials) == 4 and len(finalists) == len(top) * SEEDS
    by_id = {r.data.tags["raysl.trial_id"]: r for r in trials}
    assert {f.data.tags["raysl.finalist_of"] for f in finalists} == top
    for of in top:
        reruns = [f for f in finalists if f.data.tags["raysl.finalist_of"] == of]
        assert sorted(int(f.data.params["seed"]) for f in reruns) == [1, 2]  # seed 0 + 1, + 2
        original = by_id[of].data.params
        for rerun in reruns:
            assert rerun.data.tags["mlflow.parentRunId"] == study["parent"].info.run_id
            assert (
                rerun.info.status == "FINISHED" and rerun.data.tags["raysl.status"] == "completed"
            )
            assert {k: v for k, v in rerun.data.params.items() if k != "seed"} == {
                k: v for k, v in original.items() if k != "seed"
            }
            seed = rerun.data.tags["raysl.seed"]
            number = by_id[of].data.tags["raysl.optuna_trial"]
            assert rerun.info.run_name.startswith(f"#{number} seed {seed} val ")
            history = study["client"].get_metric_history(rerun.info.run_id, "val/knn_top1")
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    # through Ray: a second Tuner in the study's storage, one Tune trial per fit
    fits = list((study["storage"] / f"{NAME}-finalists").glob("_fit_trial_*"))
    assert len(fits) == len(top) * SEEDS, fits


def test_ranked_by_the_mean_over_seeds(study: dict) -> None:
    values: dict[str, list[float]] = {}
    for run in study["trials"]:
        values[run.data.tags["raysl.trial_id"]] = [run.data.metrics["val/knn_top1"]]
    for run in study["finalists"]:
        values[run.data.tags["raysl.finalist_of"]].append(run.data.metrics["val/knn_top1"])
    finalists = {k: v for k, v in values.items() if len(v) == 1 + SEEDS}
    # by the mean; a tie (kNN on 26 val images moves in steps) by the trial's own last value
    expected = sorted(
        finalists, key=lambda k: (-statistics.mean(finalists[k]), -finalists[k][0], k)
    )
    board, n = study["board"], len(finalists)
    assert set(finalists) == rerun_ids(study["trials"])
    assert [r["trial_id"] for r in board[:n]] == expected  # finalists first, by their mean
    for row in board[:n]:
        seeds = finalists[row["trial_id"]]
        assert row["seeds"] == 1 + SEEDS
        assert row["mean_over_seeds"] == pytest.approx(statistics.mean(seeds))
        assert row["std_over_seeds"] == pytest.approx(statistics.stdev(seeds))
    assert all(r["seeds"] is None for r in board[n:]) and len(board) == 4  # trials only
    # the gain over the baseline: the winner's mean minus the baseline's mean
    base = next(r for r in board if r["baseline"])
    gain = study["parent"].data.metrics["study/gain_over_baseline"]
    assert gain == pytest.approx(board[0]["mean_over_seeds"] - base["mean_over_seeds"])
    winner = board[0]
    cell = f"{winner['mean_over_seeds']:.2f} ± {winner['std_over_seeds']:.2f} ({1 + SEEDS})"
    assert cell in study["stdout"] and cell in study["report"]
    summary = study["parent"].data.tags["raysl.summary"]
    assert f"over {1 + SEEDS} seeds (val/knn_top1, mean)" in summary
    assert summary in " ".join(study["stdout"].split())  # wrapped at words on the terminal
    assert study["parent"].data.tags["raysl.best_trial_id"] == winner["trial_id"]
    # best_config.yaml is the winner's config, with its own seed
    client, parent = study["client"], study["parent"]
    path = client.download_artifacts(parent.info.run_id, "best_config.yaml", str(study["tmp"]))
    config = yaml.safe_load(Path(path).read_text())["config"]
    assert config["seed"] == 0
    assert config["optim"]["lr"] == pytest.approx(winner["optim.lr"])
    assert config["loss"]["infonce"]["temperature"] == pytest.approx(
        winner["loss.infonce.temperature"]
    )


def test_a_second_study_on_the_same_storage_runs_its_own_finalists(study: dict) -> None:
    """The same space again with another --out on the same --storage: its own Tune
    experiments (named by --out), so its finalists run; they were restored from the first
    study's `<name>-finalists`, and not run, when Tune's experiment took the space's name."""
    tmp, storage = study["tmp"], study["storage"]
    first = sorted(p.name for p in (storage / f"{NAME}-finalists").glob("_fit_trial_*"))
    out = tmp / "runs" / "again"
    proc = run_cli(
        "tune", str(tmp / f"{NAME}.yaml"), "--out", str(out), "--storage", str(storage),
        "--tracking-uri", f"sqlite:///{tmp}/again.db", "-q", cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reruns = [line for line in proc.stdout.splitlines() if "(finalist) completed" in line]
    fits = list((storage / "again-finalists").glob("_fit_trial_*"))
    assert len(reruns) == len(fits) >= TOP * SEEDS, proc.stdout
    assert sorted(p.name for p in (storage / f"{NAME}-finalists").glob("_fit_trial_*")) == first
    assert list((storage / "again").glob("experiment_state-*.json"))
    board = json.loads((out / "leaderboard.json").read_text())
    assert board[0]["seeds"] == SEEDS + 1  # the winner ranked by its mean over seeds


@pytest.mark.parametrize("kill_after", ["RUNNING", "FINISHED"], ids=["started", "finished"])
def test_killed_driver_resumes_mid_finalists(tmp_path: Path, kill_after: str) -> None:
    """The driver killed (by pid) once the first finalist fit has started, or finished:
    `--resume` runs the fits still owed, each (trial, seed) pair logged once and FINISHED,
    and the leaderboard ranks by all of them."""
    name = "resumed_finalists"
    space = finalist_space(tmp_path, name)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "runs" / name
    args = [sys.executable, "-m", "raysl", "tune", str(space), "--out", str(out)]
    args += ["--tracking-uri", uri, "-q"]  # Tune's state in the default storage
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    from mlflow.tracking import MlflowClient

    def finalists_seen() -> int:
        try:
            experiment = MlflowClient(uri).get_experiment_by_name(name)
            runs = MlflowClient(uri).search_runs(
                [experiment.experiment_id], "tags.`raysl.kind` = 'finalist'"
            )
        except Exception:  # the store or the experiment is being created
            return 0
        return sum(r.info.status in (kill_after, "FINISHED") for r in runs)

    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and finalists_seen() < 1:
        time.sleep(0.5)
    assert driver.poll() is None, f"the driver ended before a finalist was {kill_after}"
    assert finalists_seen() >= 1, f"no finalist {kill_after} before the deadline"
    os.kill(driver.pid, signal.SIGKILL)  # the driver, by pid, mid-finalists
    driver.wait()
    time.sleep(3)  # let Ray's reaper take the local cluster down

    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("raysl.kind") == "trial"]
    finalists = [r for r in runs if r.data.tags.get("raysl.kind") == "finalist"]
    top = rerun_ids(trials)
    pairs = [(f.data.tags["raysl.finalist_of"], f.data.tags["raysl.seed"]) for f in finalists]
    assert len(pairs) == len(set(pairs)) == len(top) * SEEDS, pairs  # none twice, none lost
    assert {of for of, _ in pairs} == top
    assert all(r.info.status == "FINISHED" for r in trials + finalists), [
        (r.info.run_name, r.info.status) for r in trials + finalists
    ]
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["trial_id"] for r in board if r["seeds"] == 1 + SEEDS} == top
