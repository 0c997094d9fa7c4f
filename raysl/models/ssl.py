"""The self-supervised model: backbone + projector, and only the branches the loss terms need."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from raysl.models.backbones import Backbone, pool
from raysl.models.ema import EMATarget
from raysl.models.exits import make_exit
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
    """What DDP wraps: the encoder and, when terms need them, the predictor and the exits."""

    def __init__(
        self,
        encoder: Encoder,
        predictor: nn.Module | None,
        exit_stages: tuple[int, ...] = (),
        exits: list[nn.Module] | None = None,
        exit_heads: list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.exit_stages = exit_stages
        self.exits = nn.ModuleList(exits or [])
        self.exit_heads = nn.ModuleList(exit_heads or [])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(N, C, H, W) -> h (N, F), z (N, D), p (N, D) or None, z_sub (E, N, D) or None."""
        z_sub = None
        if self.exit_stages:
            stages = self.encoder.backbone.forward_stages(x)
            h = pool(stages[-1])
            z = self.encoder.projector(h)
            z_sub = torch.stack(
                [
                    head(net(stages[s - 1]))
                    for s, net, head in zip(self.exit_stages, self.exits, self.exit_heads)
                ]
            )
        else:
            h, z = self.encoder(x)
        p = self.predictor(z) if self.predictor is not None else None
        return h, z, p, z_sub


class SSLModel(nn.Module):
    """The online network and, if "z_target" is required, its EMA target encoder.

    Args:
        backbone: the feature extractor (its pooled output is what kNN and probes use).
        proj_hidden_dim, proj_dim, proj_layers: projector MLP.
        pred_hidden_dim: predictor MLP (built only if some term requires "p").
        requires: the `Outputs` fields the active loss terms read.
        exits, exit_size: sub-network exits (built only if some term requires "z_sub"),
            each with its own projector of the main projector's shape.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int,
        proj_dim: int,
        proj_layers: int,
        pred_hidden_dim: int,
        requires: Iterable[str],
        exits: tuple[int, ...] = (),
        exit_size: str = "fc",
    ) -> None:
        super().__init__()
        requires = frozenset(requires)
        projector = mlp(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers)
        predictor = mlp(proj_dim, pred_hidden_dim, proj_dim, 2) if "p" in requires else None
        exits = tuple(exits) if "z_sub" in requires else ()
        self.online = OnlineNetwork(
            Encoder(backbone, projector),
            predictor,
            exits,
            [make_exit(backbone, stage, exit_size) for stage in exits],
            [mlp(backbone.feature_dim, proj_hidden_dim, proj_dim, proj_layers) for _ in exits],
        )
        self.target = EMATarget(self.online.encoder) if "z_target" in requires else None

    @property
    def backbone(self) -> Backbone:
        return self.online.encoder.backbone

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        if self.target is not None:
            self.target.update(self.online.encoder, momentum)
