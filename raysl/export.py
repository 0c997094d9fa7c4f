"""A trained encoder for downstream code: a plain state dict, its input spec, and a loader.

`raysl export RUN_OR_CHECKPOINT OUT` writes

- `OUT/backbone.pt`: the backbone's `state_dict()` (tensors only; `torch.load(weights_only=True)`),
- `OUT/encoder.json`: the architecture (`model.backbone`, `model.width`, `model.stem`, input
  channels and side), the eval view (side, per-channel mean/std) and where it came from,

and `raysl.load_encoder(OUT)` rebuilds it as an `nn.Module` that maps images to the pooled
backbone features that kNN and linear probes use: (B, C, H, W) uint8 in [0, 255] (or float in
[0, 1]) -> (B, F) float32, with the run's deterministic eval view (resize if needed, then
normalise) built in. The projector, predictor and EMA target are training-only and left out.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl.errors import ConfigError, Problem

FORMAT = "raysl-encoder/1"
WEIGHTS = "backbone.pt"
META = "encoder.json"
_PREFIX = "online.encoder.backbone."  # the backbone's keys in an SSLModel state dict


class FrozenEncoder(nn.Module):
    """Images -> pooled backbone features, the run's eval view included.

    Args:
        backbone: a `raysl.models.Backbone` with trained weights.
        mean, std: per-channel statistics of the training images in [0, 1].
        size: the side the backbone was trained on (inputs of another side are resized,
            bilinear and antialiased, as the eval view does).
    """

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], size: int
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.size = int(size)
        self.feature_dim = int(backbone.feature_dim)
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) uint8 in [0, 255] or float in [0, 1] -> (B, F) float32 (not normalised)."""
        if images.is_floating_point():
            x = images.to(torch.float32)
        else:
            x = images.to(torch.float32).mul(1 / 255)  # as the eval view: x * (1/255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.backbone((x - self.mean) / self.std)


def encoder_from_state(state: Mapping[str, Any]) -> tuple[FrozenEncoder, dict[str, Any]]:
    """The encoder of a raysl checkpoint's state (`load_checkpoint`) and its `encoder.json`.

    Checkpoints written before the state carried its input spec (`state["encoder"]`) get it
    from the run's data, which is loaded once for that.
    """
    from raysl.config import Config

    cfg = Config.from_flat(dict(state["config"]))
    spec = dict(state.get("encoder") or _spec_from_data(cfg))
    weights = {k[len(_PREFIX) :]: v for k, v in state["model"].items() if k.startswith(_PREFIX)}
    meta = {
        "format": FORMAT,
        "backbone": cfg.model.backbone,
        "width": cfg.model.width,
        "stem": cfg.model.stem,
        **{k: spec[k] for k in ("channels", "image_size", "size", "mean", "std")},
        "source": spec.get("source", cfg.data.source),
        "epoch": int(state.get("epoch", 0)),
    }
    encoder = _build(meta)
    encoder.backbone.load_state_dict(weights)
    meta["feature_dim"] = encoder.feature_dim
    return encoder.eval(), meta


def write_export(encoder: FrozenEncoder, meta: Mapping[str, Any], out: str | Path) -> Path:
    """Write `OUT/backbone.pt` and `OUT/encoder.json` atomically (a new directory).

    Raises:
        ConfigError: `out` exists and is not empty.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(Problem(f"{out} exists and is not empty; pick a new directory", "OUT"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(dict(meta), indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> FrozenEncoder:
    """The encoder that `raysl export` wrote to `path` (its directory or `encoder.json`), in
    eval mode. A raysl checkpoint (an `epoch_XXXX/` directory or its `state.pt`) works too.

    Raises:
        ConfigError: nothing loadable at `path`, or the files do not match each other.
    """
    path = Path(path)
    folder = path.parent if path.name in (META, WEIGHTS) else path
    if not (folder / META).is_file():
        from raysl.checkpoint import STATE, load_checkpoint

        if path.is_file() or (path / STATE).is_file():
            return encoder_from_state(load_checkpoint(path, map_location))[0]
        raise ConfigError(
            Problem(
                f"no {META} in {folder}: give a directory written by `raysl export` "
                "(or a raysl checkpoint)",
                key="path",
            )
        )
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ConfigError(
            Problem(f"{folder / META} is not a {FORMAT} file (format {meta.get('format')!r})")
        )
    encoder = _build(meta)
    weights = torch.load(folder / WEIGHTS, map_location=map_location, weights_only=True)
    try:
        encoder.backbone.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(
            Problem(f"{folder / WEIGHTS} does not match {META} ({first})", key="path")
        ) from None
    return encoder.eval()


def _build(meta: Mapping[str, Any]) -> FrozenEncoder:
    from raysl.models import build_backbone

    backbone = build_backbone(
        meta["backbone"],
        int(meta["channels"]),
        int(meta["size"]),
        width=int(meta["width"]),
        stem=meta["stem"],
    )
    return FrozenEncoder(backbone, meta["mean"], meta["std"], int(meta["size"]))


def _spec_from_data(cfg: Any) -> dict[str, Any]:
    from raysl.data.splits import load_splits

    splits = load_splits(cfg.data, seed=cfg.seed)
    _, channels, height, _ = splits.train.images.shape
    return {
        "channels": int(channels),
        "image_size": int(height),
        "size": int(cfg.augment.size or height),
        "mean": list(splits.mean),
        "std": list(splits.std),
        "source": splits.name,
    }
