"""The study's winner, evaluated and usable: test-split evaluation, MLflow model, registry.

At the end of a completed study (`finish_winner`), on the parent run:

- **Test evaluation.** The best trial's checkpoint gets the final evaluation that `raysl
  train` runs (`raysl.final_eval.evaluate_checkpoint`: kNN on the test split with train + val as
  the bank; with `eval.linear_probe`, probes scored on val and on test). Trials never see the
  test split (`eval.test` is off in a study), so this is the first time it is used; logged as
  metrics `test/knn_top1` (and `val/linear_top1`, `test/linear_top1`) on the parent, with tag
  `raysl.test_trial_id` naming the trial.
- **MLflow model** `encoder`: the best backbone as `raysl.export.FrozenEncoder` (images ->
  pooled features, the eval view built in) via `mlflow.pytorch.log_model`, with a signature
  and an input example (four test images, uint8). `mlflow.pytorch.load_model(uri)` returns it.
- **Registry.** With `tune.register: NAME`, the model is registered as a new version of NAME
  (tags `raysl.study`, `raysl.trial_id`, `test/knn_top1`).

`mlflow.pytorch.log_model` works through mlflow's fluent API, so its tracking URI is set to the
study's for that call only and restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODEL_NAME = "encoder"  # the logged model's name (artifact path) on the parent run
_EXAMPLE_IMAGES = 4


def finish_winner(
    client: Any,
    tracking_uri: str,
    parent_run_id: str,
    cfg: Any,
    checkpoint: str | Path,
    trial_id: str,
    study_name: str,
    register: str | None = None,
) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test split and log it as a model; see the module.

    Args:
        cfg: the best trial's `Config` (its `eval.test` is switched on here).
        checkpoint: the trial's checkpoint directory (`state.pt` inside) or file.

    Returns:
        `{"metrics": {...}, "model_uri": "models:/m-..." , "registered": "NAME/3" or None}`.
    """
    import torch

    from raysl.batches import in_memory_feed
    from raysl.checkpoint import load_checkpoint
    from raysl.export import encoder_from_state
    from raysl.final_eval import evaluate_checkpoint
    from raysl.runtime import Runtime
    from raysl.train_state import STATE_KEYS

    cfg = cfg.override({"eval.test": True})
    state = load_checkpoint(checkpoint, require=STATE_KEYS)
    gpu = torch.cuda.is_available() and cfg.device != "cpu"
    runtime = Runtime(torch.device("cuda" if gpu else "cpu"))
    feed = in_memory_feed(cfg.data, cfg.seed, runtime)
    metrics = evaluate_checkpoint(cfg, state, runtime, feed=feed)
    client.set_tag(parent_run_id, "raysl.test_trial_id", trial_id)
    encoder, meta = encoder_from_state(state)
    test = feed.splits.test if feed.splits.test is not None else feed.splits.val
    example = test.images[:_EXAMPLE_IMAGES].numpy()  # (4, C, H, W) uint8
    result: dict[str, Any] = {"metrics": metrics, "model_uri": None, "registered": None}
    tags = {"raysl.study": study_name, "raysl.trial_id": trial_id}
    tags.update({k: f"{v:.4g}" for k, v in metrics.items()})
    try:
        info = _log_model(tracking_uri, parent_run_id, encoder, example, register, tags)
    except Exception:
        client.log_batch(parent_run_id, metrics=_metrics(metrics))  # the evaluation stands
        raise
    # linked to the model: its page lists them, and the run's Models column names it
    client.log_batch(parent_run_id, metrics=_metrics(metrics, info.model_id))
    result["model_uri"] = info.model_uri
    version = getattr(info, "registered_model_version", None)
    if register and version is not None:
        result["registered"] = f"{register}/{version}"
        for key, value in tags.items():
            client.set_model_version_tag(register, str(version), key, value)
        client.set_tag(parent_run_id, "raysl.registered_model", f"{register}/{version}")
    client.set_tag(parent_run_id, "raysl.encoder_features", str(meta["feature_dim"]))
    return result


def try_finish_winner(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """`finish_winner`, with a failure logged (and None returned) instead of raised: the
    study's results stand without these extras."""
    try:
        return finish_winner(*args, **kwargs)
    except Exception:
        logger.warning("could not evaluate or log the best trial's encoder", exc_info=True)
        return None


def winner_line(winner: Mapping[str, Any]) -> str:
    """`best trial on the test split: test/knn_top1 97.22; model models:/quick/1` (terminal)."""
    scores = ", ".join(
        f"{k} {v:.2f}" for k, v in winner["metrics"].items() if k.startswith("test/")
    )
    model = f"models:/{winner['registered']}" if winner.get("registered") else winner["model_uri"]
    return f"best trial on the test split: {scores or 'no test split'}; encoder: {model}"


def _metrics(values: Mapping[str, float], model_id: str | None = None) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0, model_id=model_id) for k, v in values.items()]


def _log_model(
    tracking_uri: str,
    run_id: str,
    encoder: Any,
    example: Any,
    register: str | None,
    tags: Mapping[str, str],
) -> Any:
    import mlflow.pytorch
    import torch
    import torchvision
    from mlflow.models import infer_signature

    from raysl.tracking.store import code_version

    with torch.no_grad():
        features = encoder(torch.from_numpy(example)).numpy()  # (4, F) float32
    signature = infer_signature(example, features)
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"raysl=={code_version()[0].split('+')[0]}",  # FrozenEncoder's class lives in raysl
    ]
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    with _fluent_uri(tracking_uri, experiment_id):
        return mlflow.pytorch.log_model(
            encoder,
            name=MODEL_NAME,
            run_id=run_id,
            signature=signature,
            input_example=example,
            registered_model_name=register or None,
            pip_requirements=requirements,
            tags=dict(tags),
            # mlflow links the run's metrics at this step to the model: none is at -1, so
            # only the test metrics, logged with the model's id afterwards, are linked
            step=-1,
        )


@contextlib.contextmanager
def _fluent_uri(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """mlflow's process-wide tracking and registry URI (and the experiment a logged model goes
    to, else the Default experiment "0") set for the block only."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    previous = (tracking._tracking_uri, registry._registry_uri, fluent._active_experiment_id)
    # set_tracking_uri / set_registry_uri also export MLFLOW_*_URI to the environment (so that
    # subprocesses inherit them): put those back too, or later commands would use this store
    env = {key: os.environ.get(key) for key in _URI_ENV}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment_id is not None:
        fluent._active_experiment_id = experiment_id
    try:
        yield
    finally:
        tracking._tracking_uri, registry._registry_uri, fluent._active_experiment_id = previous
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
