"""Negative-cosine similarity of BYOL (Grill et al., 2020, arXiv:2006.07733, eq. 2) and
SimSiam (Chen & He, 2021, arXiv:2011.10566, eqs. 1-2).

Official code: google-deepmind/byol (`byol/byol.py`, `regression_loss`) and
facebookresearch/simsiam (`simsiam/builder.py` with `nn.CosineSimilarity` in `main_simsiam.py`).

Differences from the official code, all deliberate:
- Scale: this term is the *mean* over the two directions of 2 − 2 cos. BYOL's code sums the
  two directions (2x this value and gradient); SimSiam's is −(cos(p1, z2) + cos(p2, z1)) / 2
  (this value / 2 − 1, half the gradient). The minimiser is the same and `weight` absorbs the
  factor. (`icc` reproduces each ICCL head's own scale by default: its `sim_scale`.)
- V > 2 views: the mean over the V(V−1) ordered view pairs; the official code has two views.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.losses.base import LossTerm, Outputs


def cross_view_similarity(p: Tensor, t: Tensor) -> Tensor:
    """Mean of 2 - 2 cos(p_v, t_w) over ordered view pairs v != w and over anchors.

    Args:
        p: (V, B, D) online predictions; gradients flow through them.
        t: (V, B, D) targets, already detached by the caller.

    Returns:
        A scalar in [0, 4]. For V=2 it is (d(p_1, t_2) + d(p_2, t_1)) / 2 with
        d(a, b) = ||n(a) - n(b)||^2 = 2 - 2 cos(a, b).
    """
    views = p.shape[0]
    if views < 2:
        raise ValueError(f"the similarity loss needs at least 2 views, got {views}")
    p = F.normalize(p, dim=-1)  # (V, B, D)
    t = F.normalize(t, dim=-1)  # (V, B, D)
    cos = (p[:, None] * t[None, :]).sum(-1)  # (V, V, B): cos[v, w, b] = cos(p_v, t_w) of image b
    other = ~torch.eye(views, dtype=torch.bool, device=p.device)  # (V, V): v != w
    return (2 - 2 * cos[other]).mean()


class Similarity(LossTerm):
    """Regress each view's prediction onto the other views' targets: 2 - 2 cos(p_v, t_w).

    For two views the value is (||n(p_1) - n(t_2)||^2 + ||n(p_2) - n(t_1)||^2) / 2, the mean
    of BYOL's symmetrised loss over its two directions; with V views it is the mean over the
    V(V-1) ordered pairs (v, w), v != w, and over this rank's anchors. Each anchor's loss uses
    only its own image, so no gathering is needed under DDP.

    Scale: BYOL's paper loss (eq. 2) is the *sum* of the two directions (2x this value);
    SimSiam's is -cos averaged over the two directions, i.e. (this value) / 2 - 1. All three
    have the same minimiser and gradient directions; the constant factor is absorbed by the
    term's `weight` (or the learning rate), which is the only scale knob in raysl.

    Args:
        target: "ema" (BYOL): targets are the EMA target network's projections
            (`z_target`), so the model builds a predictor and an EMA target.
            "stopgrad" (SimSiam): targets are the online projections `z`, detached.
    """

    min_views = 2  # each view is regressed onto the other views

    def __init__(self, target: Literal["ema", "stopgrad"] = "ema") -> None:
        super().__init__()
        if target not in ("ema", "stopgrad"):
            raise ValueError(f"target must be 'ema' or 'stopgrad', got {target!r}")
        self.target = target
        self.requires = frozenset({"p", "z_target"} if target == "ema" else {"p", "z"})

    def forward(self, out: Outputs) -> Tensor:
        assert out.p is not None, "the similarity loss needs predictor outputs ('p')"
        if self.target == "ema":
            assert out.z_target is not None, "target='ema' needs the EMA target ('z_target')"
            t = out.z_target.detach()
        else:
            t = out.z.detach()  # SimSiam's stop-gradient
        return cross_view_similarity(out.p, t)  # (V, B, D) x (V, B, D) -> scalar

    def extra_repr(self) -> str:
        return f"target={self.target!r}"
