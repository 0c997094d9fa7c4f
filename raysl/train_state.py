"""What a checkpoint of a `fit()` run holds besides the weights, and putting it back.

`STATE_KEYS` are the keys every checkpoint state has (`raysl.train._Run.state`). The RNG states
are saved as tensors and plain numbers, so the file loads with `torch.load(weights_only=True)`;
checkpoints of older versions, which held numpy's own tuple, still restore.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from raysl.errors import ConfigError, Problem, cut

STATE_KEYS = ("epoch", "step", "model", "optimizer", "criterion", "history", "config", "rng")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state(cuda: bool) -> dict[str, Any]:
    """torch's (and CUDA's), numpy's and Python's global RNG states."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else None,
        "numpy": _numpy_rng_state(),
        "python": random.getstate(),
    }


def set_rng_state(rng: Mapping[str, Any], cuda: bool) -> None:
    """Put back what `rng_state` saved (CUDA's only where this run is on CUDA and it was)."""
    torch.set_rng_state(rng["torch"])
    if cuda and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    _set_numpy_rng_state(rng["numpy"])
    random.setstate(rng["python"])


def load_modules(
    state: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: torch.nn.Module,
) -> None:
    """Load the checkpoint's weights and optimizer state; ConfigError where they do not fit."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        criterion.load_state_dict(state["criterion"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(
            Problem(
                "the checkpoint does not fit this model and data "
                f"({cut(str(error).strip().splitlines()[0])}); resume with the data and "
                "config it was made with, or start a new run in another --out directory",
                key="--resume",
            )
        ) from None


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's legacy global RNG state as a tensor and plain numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_rng_state(state: Any) -> None:
    if isinstance(state, Mapping):  # this version's form; older checkpoints hold the tuple
        keys = state["keys"].numpy().astype(np.uint32)
        state = (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
    np.random.set_state(state)


def encoder_info(splits: Any, augment: Any) -> dict[str, Any]:
    """What `raysl export` needs of a run without its data: the backbone's input channels and
    side, the eval view's size and normalisation, the source."""
    _, channels, height, _ = splits.train.images.shape
    return {
        "channels": int(channels),
        "image_size": int(height),
        "size": int(augment.out_size),
        "mean": [float(v) for v in splits.mean],
        "std": [float(v) for v in splits.std],
        "source": splits.name,
    }
