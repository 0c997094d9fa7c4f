"""A finished study as a researcher meets it: through MLflow's client, and in the MLflow UI in a
real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

One small real study (Ray, Optuna, ASHA, SQLite MLflow store) is shared by the tests below:
- the winner's test-split evaluation on the parent run, and the registered encoder that
  `mlflow.pytorch.load_model` returns gives the same features as the best checkpoint;
- each trial has the dataset as an input and its config.yaml; no Default experiment is left;
- `raysl ui` prints a link that opens the trials table, which lists every trial by name.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "ui_study"


def _tool():
    spec = importlib.util.spec_from_file_location("shots", REPO / "tools" / "mlflow_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["shots"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.launch.test_ray_tune import study_file

    directory = tmp_path_factory.mktemp("ui")
    space = study_file(directory, name=NAME, num_samples=4)
    proc = run_cli(
        "tune", str(space), "--set", "tune.register=ui-encoder", "-q", cwd=directory
    )  # the default store: ./mlflow.db, artifacts in ./mlartifacts
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best trial on the test split: test/knn_top1" in proc.stdout
    return directory


def test_the_winner_is_evaluated_on_test_and_registered(study: Path) -> None:
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    import raysl
    from raysl.tracking.model import _fluent_uri

    uri = f"sqlite:///{study}/mlflow.db"
    client = MlflowClient(uri)
    assert not (study / "mlruns").exists() and (study / "mlartifacts" / NAME).is_dir()
    assert [e.name for e in client.search_experiments()] == [NAME]  # no empty Default
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("raysl.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("raysl.kind") == "trial"]
    assert 0 <= parent.data.metrics["test/knn_top1"] <= 100
    assert parent.data.tags["raysl.registered_model"] == "ui-encoder/1"
    best_run = parent.data.tags["raysl.best_run_id"]
    assert (
        parent.data.tags["raysl.test_trial_id"]
        == client.get_run(best_run).data.tags["raysl.trial_id"]
    )
    for trial in trials:
        (dataset,) = trial.inputs.dataset_inputs
        assert dataset.dataset.name == "synthetic"
        assert "config.yaml" in [a.path for a in client.list_artifacts(trial.info.run_id)]
    (parent_input,) = parent.inputs.dataset_inputs
    assert parent_input.dataset.digest == trials[0].inputs.dataset_inputs[0].dataset.digest

    local = client.download_artifacts(parent.info.run_id, "best_checkpoint", str(study / "dl"))
    with _fluent_uri(uri):
        registered = mlflow.pytorch.load_model("models:/ui-encoder/1")
    from_checkpoint = raysl.load_encoder(local)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(registered(images), from_checkpoint(images), rtol=0, atol=1e-6)

    for run_id in (parent.info.run_id, best_run):  # the study, or its best trial
        out = study / f"exported-{run_id}"
        proc = run_cli("export", run_id, str(out), cwd=study)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with torch.no_grad():
            torch.testing.assert_close(
                raysl.load_encoder(out)(images), from_checkpoint(images), rtol=0, atol=1e-6
            )
    other = next(t.info.run_id for t in trials if t.info.run_id != best_run)
    proc = run_cli("export", other, str(study / "nope"), cwd=study)
    assert proc.returncode == 2 and "not its study's best" in proc.stderr


def test_the_ui_opens_on_the_trials_table(study: Path) -> None:
    tool = _tool()
    if why := tool.browser_missing():
        pytest.skip(f"no headless browser here: {why}")
    assert shutil.which(str(tool.CHROMEDRIVER))
    problems = tool.check_ui(study, NAME)
    assert problems == []


def test_raysl_ui_prints_the_trials_link(study: Path) -> None:
    tool = _tool()
    port = tool.free_port()
    with tool.raysl_ui(study, port) as (base, links):
        assert base == f"http://127.0.0.1:{port}"
        (link,) = links
        assert "/runs?workflowType=machine_learning&viewStateShareKey=raysl-trials" in link
        out = subprocess.run(
            [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen('{base}/health').status)"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.stdout.strip() == "200"
