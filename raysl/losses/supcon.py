"""Supervised contrastive loss, SupCon (Khosla et al., 2020, arXiv:2004.11362, eq. 2 L^sup_out).

Official code: HobbitLong/SupContrast `losses.py` (`SupConLoss`, `contrast_mode="all"`).
SupCon is InfoNCE with class labels as the ids (`raysl.losses.kernel.contrast_by_id`): every
other view with the same label, on any rank, is a positive.

Differences from `SupConLoss`, all deliberate:
- Its hidden `temperature / base_temperature` factor (0.07 by default) is the optional
  `base_temperature` argument, off by default: `weight` is the only scale knob.
- Anchors without a positive (possible only with one view) are left out of the mean, as the
  kernel does and as SelfCon's `ConLoss(supcon_s=True)` does (raymin0223/
  self-contrastive-learning `losses/losses.py`). SupContrast's own fix (commit 72fd989,
  "fix: nan loss values") instead gives them a loss of 0 that still counts in the mean.
- The mean over anchors with a positive is over the *global* batch, so W ranks equal one
  process however the anchors without a positive fall on the ranks.
- No `+ 1e-9` in the log-denominator and no max-subtraction: `log_softmax` is stable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raysl import distributed
from raysl.losses.base import LossTerm, Outputs, Positive
from raysl.losses.kernel import contrast_by_id


def supcon_loss(z: Tensor, ids: Tensor, temperature: float) -> Tensor:
    """L^sup_out over views `z` with ids `ids`: `contrast_by_id` whose mean is over the
    anchors with a positive in the *global* batch.

    The kernel averages over this rank's anchors that have a positive. When some anchors have
    none, ranks can hold different numbers of them, and the mean of the rank means is not the
    global mean; this rescales rank r's value by W·n_r / n, so that the mean over ranks (and,
    through DDP, the gradient) is that of one process on the whole batch.

    Args:
        z: (V, B, D) projections of V views of this rank's B images.
        ids: (B,) labels (SupCon) or dataset indices; equal ids are positives.
        temperature: τ.
    """
    loss = contrast_by_id(z, ids, temperature)
    if z.shape[0] > 1:  # the other views of the same image: every anchor has a positive
        return loss
    return loss * _global_share(ids, loss.dtype)  # V = 1: anchors are the images


@torch.no_grad()
def _global_share(anchor_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """W·n_r / n: n_r anchors of this rank and n of all ranks have a positive. (N,) -> ()."""
    column_ids = distributed.all_gather(anchor_ids)  # (M,), rank r's anchors at [r*N, (r+1)*N)
    _, inverse, counts = torch.unique(column_ids, return_inverse=True, return_counts=True)
    has_positive = counts[inverse] > 1  # (M,): its id appears in another column
    start = distributed.rank() * len(anchor_ids)
    mine = has_positive[start : start + len(anchor_ids)].sum().to(dtype)
    total = has_positive.sum().clamp(min=1).to(dtype)  # none anywhere: the loss is 0 already
    return mine * distributed.world_size() / total


class SupCon(LossTerm):
    """Supervised contrastive loss L^sup_out: positives are all views with the same label.

    Anchor i (a view of image b on any rank) has positives P(i) = every other view, on any
    rank, whose label equals b's, and its loss is
    -1/|P(i)| Σ_{p∈P(i)} log exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) over all other views (cosine s).
    The value is the mean over anchors with a positive. With all-distinct labels it equals
    `InfoNCE` at the same temperature; with one view (V=1) it is SupCon-S, the single-view
    baseline of SelfCon.

    Args:
        temperature: τ. SupContrast uses 0.1 for CIFAR (README, batch 1024); solo-learn 0.2.
        base_temperature: if set, multiply the loss by τ / base_temperature as
            SupContrast does (its default base is 0.07, so at τ=0.1 the loss is x1.43).
            None (default): no factor.
    """

    requires = frozenset({"z", "labels"})

    def __init__(self, temperature: Positive = 0.1, base_temperature: Positive | None = None):
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, out: Outputs) -> Tensor:
        loss = supcon_loss(out.z, out.labels, self.temperature)
        if self.base_temperature is not None:
            loss = loss * (self.temperature / self.base_temperature)
        return loss
