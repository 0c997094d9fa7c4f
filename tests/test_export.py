"""The trained encoder outside raysl: `raysl export`, `raysl.load_encoder`, the MLflow model and
registry entry of a study's winner, its test-split evaluation, and the runs' recorded inputs.

Oracle for "the same features": the checkpoint's own SSLModel, rebuilt here from the config,
applied to the run's deterministic eval view (`Augment.plain`), which is what kNN and the probe
see during training. Oracle for the test evaluation: `fit()`'s own final report on the same
weights (the checkpoint is the last epoch's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY

DIGITS = {
    **{k: v for k, v in TINY.items() if not k.startswith("data.synthetic")},
    "data.source": "digits",
    "data.batch_size": 128,
    "epochs": 1,
    "augment.blur_prob": 0.0,
    "eval.test": True,
    "eval.linear_probe": True,
    "eval.probe_epochs": 5,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch on digits with a checkpoint; returns the config, checkpoint and fit's summary."""
    from raysl.config import Config
    from raysl.train import fit

    out = tmp_path_factory.mktemp("trained")
    cfg = Config().override(DIGITS)
    summary = fit(cfg, checkpoint_dir=out / "checkpoints")
    (checkpoint,) = sorted((out / "checkpoints").glob("epoch_*"))
    return {"cfg": cfg, "checkpoint": checkpoint, "summary": summary}


def _oracle_features(cfg, checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's backbone on the eval view, built from the config alone."""
    from raysl.augment import Augment
    from raysl.checkpoint import load_checkpoint
    from raysl.data.splits import load_splits
    from raysl.losses import build_criterion
    from raysl.models import build_model

    splits = load_splits(cfg.data, seed=cfg.seed)
    _, channels, side, _ = splits.train.images.shape
    augment = Augment(cfg.augment, channels, side, splits.mean, splits.std)
    criterion = build_criterion(
        cfg.active_terms(), dim=cfg.model.proj_dim, num_classes=splits.num_classes,
        num_samples=len(splits.train.images), epochs=cfg.epochs,
    )  # fmt: skip
    model = build_model(cfg.model, channels, augment.out_size, criterion.requires)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.eval()
    with torch.no_grad():
        return model.backbone(augment.plain(images))


def _test_images(cfg) -> torch.Tensor:
    from raysl.data.splits import load_splits

    return load_splits(cfg.data, seed=cfg.seed).test.images[:64]  # (64, 1, 8, 8) uint8


def test_export_writes_a_plain_state_dict_that_load_encoder_rebuilds(
    trained: dict, tmp_path: Path
) -> None:
    import raysl
    from tests.conftest import run_cli

    out = tmp_path / "encoder"
    proc = run_cli("export", str(trained["checkpoint"]), str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backbone.pt" in proc.stdout and "raysl.load_encoder" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["backbone.pt", "encoder.json"]
    weights = torch.load(out / "backbone.pt", weights_only=True)  # tensors only
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert all(not k.startswith(("online", "projector")) for k in weights)  # the backbone only
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["backbone"] == "convnet" and meta["channels"] == 1 and meta["size"] == 8
    assert meta["feature_dim"] == 8 * TINY["model.width"]

    encoder = raysl.load_encoder(out)
    assert isinstance(encoder, torch.nn.Module) and not encoder.training
    images = _test_images(trained["cfg"])
    expected = _oracle_features(trained["cfg"], trained["checkpoint"], images)
    with torch.no_grad():
        got = encoder(images)
        from_float = encoder(images.float() / 255)  # float in [0, 1] works too
        from_checkpoint = raysl.load_encoder(trained["checkpoint"])(images)
    assert got.shape == (64, meta["feature_dim"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(from_float, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(from_checkpoint, expected, rtol=0, atol=1e-5)


def test_export_refuses_bad_input_with_one_line(trained: dict, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    proc = run_cli("export", str(trained["checkpoint"]), str(busy))
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    proc = run_cli("export", "no-such-thing", str(tmp_path / "x"))
    assert proc.returncode == 2 and "neither a file nor an MLflow run id" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_winner_gets_test_evaluation_mlflow_model_and_registry_version(
    trained: dict, tmp_path: Path
) -> None:
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from raysl.tracking.model import _fluent_uri as fluent_uri
    from raysl.tracking.model import finish_winner, winner_line
    from raysl.tracking.store import open_client, sqlite_uri

    uri = sqlite_uri(tmp_path / "mlflow.db")
    client = open_client(uri)
    experiment = client.create_experiment("winner", artifact_location=(tmp_path / "a").as_uri())
    client.delete_experiment("0")  # as in a store a study made (raysl drops the empty Default)
    parent = client.create_run(experiment, run_name="study").info.run_id
    client.log_metric(parent, "system/cpu_utilization_percentage", 50.0, step=0)  # not the model's
    cfg = trained["cfg"].override({"eval.test": False})  # as a study's trial ran
    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    result = finish_winner(
        client, uri, parent, cfg, trained["checkpoint"], "trial_1", "study", register="digits-enc"
    )
    # mlflow's set_tracking_uri exports MLFLOW_TRACKING_URI: later commands must not inherit it
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == env_before
    summary = trained["summary"]
    metrics = MlflowClient(uri).get_run(parent).data.metrics
    for key in ("test/knn_top1", "val/linear_top1", "test/linear_top1"):
        assert metrics[key] == pytest.approx(summary[key], abs=1e-9), key  # fit's own report
    assert result["registered"] == "digits-enc/1"
    model_id = result["model_uri"].split("/")[-1]
    linked = {m.key for m in MlflowClient(uri).get_logged_model(model_id).metrics}
    assert linked == {"test/knn_top1", "val/linear_top1", "test/linear_top1"}
    assert "test/knn_top1" in winner_line(result) and "models:/digits-enc/1" in winner_line(result)
    version = MlflowClient(uri).get_model_version("digits-enc", "1")
    assert version.tags["raysl.trial_id"] == "trial_1" and version.run_id == parent

    images = _test_images(trained["cfg"])
    expected = _oracle_features(trained["cfg"], trained["checkpoint"], images)
    with fluent_uri(uri):
        registered = mlflow.pytorch.load_model("models:/digits-enc/1")
        logged = mlflow.pytorch.load_model(result["model_uri"])
        info = mlflow.models.get_model_info("models:/digits-enc/1")
    with torch.no_grad():
        torch.testing.assert_close(registered(images), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(logged(images), expected, rtol=0, atol=1e-5)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"


def test_run_inputs_record_the_dataset_and_a_runnable_config(trained: dict, tmp_path: Path) -> None:
    from raysl.runfile import load_run_file
    from raysl.tracking.inputs import RunInputs
    from raysl.tracking.store import open_client, sqlite_uri

    uri = sqlite_uri(tmp_path / "mlflow.db")
    client = open_client(uri)
    experiment = client.create_experiment("inputs", artifact_location=(tmp_path / "a").as_uri())
    first = client.create_run(experiment).info.run_id
    other_split = client.create_run(experiment).info.run_id
    cfg = trained["cfg"]
    inputs = RunInputs(client)
    inputs.log(first, cfg, name="inputs_trial_1", description="a trial")
    inputs.log(other_split, cfg.override({"seed": 1}), name=None)

    (one,) = client.get_run(first).inputs.dataset_inputs
    (two,) = client.get_run(other_split).inputs.dataset_inputs
    profile = json.loads(one.dataset.profile)
    assert one.dataset.name == "digits"
    assert (profile["train_images"], profile["val_images"], profile["test_images"]) == (
        1293, 144, 360,
    )  # 1797 digits: 360 test, val 10 % of the rest  # fmt: skip
    assert {t.key: t.value for t in one.tags}["mlflow.data.context"] == "training"
    assert one.dataset.digest != two.dataset.digest  # another seed, another val split

    names = [a.path for a in client.list_artifacts(first)]
    assert names == ["config.yaml"] and client.list_artifacts(other_split) == []
    local = client.download_artifacts(first, "config.yaml", str(tmp_path))
    doc = yaml.safe_load(Path(local).read_text())
    assert doc["name"] == "inputs_trial_1"
    assert load_run_file(local).config.to_flat() == cfg.to_flat()  # retrains exactly this run


def test_tune_register_must_be_a_model_name(tmp_path: Path) -> None:
    from raysl.errors import ConfigError
    from raysl.search import load_search_spec

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    assert load_search_spec(space, {"tune.register": "quick-enc"}).tune.register == "quick-enc"
    assert load_search_spec(space).tune.register is None
    with pytest.raises(ConfigError, match=r"tune.register: must be null or a registered-model"):
        load_search_spec(space, {"tune.register": "models:/x"})
