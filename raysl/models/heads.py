"""Projector and predictor MLPs."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, bn_last: bool = False
) -> nn.Sequential:
    """`layers-1` blocks of Linear-BN-ReLU, then a Linear (optionally followed by a BN).

    layers=2 is SimCLR's projector (Chen et al., 2020) and BYOL's projector and predictor
    (Grill et al., 2020); `bn_last` gives the affine-free BN SimSiam/ICC put on the projector.
    """
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        ]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not bn_last))
    if bn_last:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)
