"""Models: backbones, heads, the EMA target and the SSL model assembled from the config."""

from __future__ import annotations

from collections.abc import Iterable

from raysl.models.backbones import Backbone, build_backbone
from raysl.models.heads import mlp
from raysl.models.ssl import SSLModel
from raysl.models.sync_bn import convert_sync_batchnorm


def build_model(
    cfg,
    in_channels: int,
    image_size: int,
    requires: Iterable[str],
    exits: tuple[int, ...] = (),
    exit_size: str = "fc",
) -> SSLModel:
    """Build the SSL model for `cfg` (a `ModelConfig`) with only the branches `requires` needs."""
    backbone = build_backbone(cfg.backbone, in_channels, image_size, width=cfg.width, stem=cfg.stem)
    return SSLModel(
        backbone,
        cfg.proj_hidden_dim,
        cfg.proj_dim,
        cfg.proj_layers,
        cfg.pred_hidden_dim,
        requires,
        exits,
        exit_size,
    )


__all__ = ["Backbone", "SSLModel", "build_backbone", "build_model", "convert_sync_batchnorm", "mlp"]
