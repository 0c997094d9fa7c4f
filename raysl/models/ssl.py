"""The self-supervised model: backbone + projector, and only the branches the loss terms need."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from raysl.models.backbones import Backbone
from raysl.models.ema import EMATarget
from raysl.models.heads import mlp


class Encoder(nn.Module):
    """Backbone followed by a projector: x -> (h, z)."""

    def __init__(self, backbone: Backbone, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)  # (N, F)
        return h, self.projector(h)  # (N, F), (N, D)


class OnlineNetwork(nn.Module):
    """What DDP wraps: the encoder and, when a term needs it, the predictor."""

    def __init__(self, encoder: Encoder, predictor: nn.Module | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(N, C, H, W) -> h (N, F), z (N, D), p (N, D) or None."""
        h, z = self.encoder(x)
        p = self.predictor(z) if self.predictor is not None else None
        return h, z, p


class SSLModel(nn.Module):
    """The online network and, if "z_target" is required, its EMA target encoder.

    Args:
        backbone: the feature extractor (its pooled output is what kNN and probes use).
        proj_hidden_dim, proj_dim, proj_layers: projector MLP.
        pred_hidden_dim: predictor MLP (built only if some term requires "p").
        requires: the `Outputs` fields the active loss terms read.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int,
        proj_dim: int,
        proj_layers: int,
        pred_hidden_dim: int,
        requires: Iterable[str],
    ) -> None:
        super().__init__()
        requires = frozenset(requires)
        projector = mlp(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        predictor = mlp(proj_dim, pred_hidden_dim, proj_dim, 2) if "p" in requires else None
        self.online = OnlineNetwork(Encoder(backbone, projector), predictor)
        self.target = EMATarget(self.online.encoder) if "z_target" in requires else None

    @property
    def backbone(self) -> Backbone:
        return self.online.encoder.backbone

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        if self.target is not None:
            self.target.update(self.online.encoder, momentum)
