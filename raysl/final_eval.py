"""The final evaluation of a saved checkpoint, without training: what a study's winner gets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from raysl.batches import DataFeed, in_memory_feed
from raysl.checkpoint import load_checkpoint
from raysl.config import Config
from raysl.runtime import Runtime
from raysl.train import _Run
from raysl.train_state import STATE_KEYS


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | Path | Mapping[str, Any],
    runtime: Runtime | None = None,
    feed: DataFeed | None = None,
) -> dict[str, float]:
    """The final evaluation (`Evaluator.final`: test kNN, linear probe per `cfg.eval`) of a
    checkpoint of `cfg`'s run; the data is loaded as for training (or `feed`), nothing trained."""
    rt = runtime or Runtime(torch.device("cpu"))
    run = _Run(cfg, rt, "eval", None, feed or in_memory_feed(cfg.data, cfg.seed, rt))
    state = checkpoint
    if not isinstance(state, Mapping):
        state = load_checkpoint(checkpoint, require=STATE_KEYS)
    run.restore(state)
    return run.evaluator.final(run.model.backbone)
