"""Supervised contrastive loss, SupCon (Khosla et al., 2020, arXiv:2004.11362, eq. 2 L^sup_out).

Official code: HobbitLong/SupContrast `losses.py` (`SupConLoss`, `contrast_mode="all"`).
SupCon is InfoNCE with class labels as the ids (`raysl.losses.kernel.contrast_by_id`): every
other view with the same label, on any rank, is a positive.

Anchors without a positive (possible only with one view, V=1) have no defined 1/|P(i)| in
eq. 2. `no_positive` says what happens to them:
- "exclude" (default): they are left out of the mean over anchors. This is what
  pytorch-metric-learning's `SupConLoss` and SelfCon's `ConLoss(supcon_s=True)`
  (raymin0223/self-contrastive-learning `losses/losses.py`) do.
- "count": they contribute 0 and still count in the mean over all anchors. This is
  SupContrast's own fix (commit 72fd989, "fix: nan loss values": an empty positive set's
  divisor is set to 1), so with a of n anchors positive-less the value and gradients are
  "exclude"'s x (n − a) / n.
Default "exclude", because the loss of an anchor that has positives should not shrink with
the number of other anchors that have none: with "count" the effective weight (and so the
learning rate) of a V=1 batch depends on its label composition. SupContrast itself always
trains with two views (`TwoCropTransform`), where every anchor has a positive and the two
settings are identical.

Differences from the official code (`SupConLoss`), all deliberate:
- Its hidden `temperature / base_temperature` factor (0.07 by default) is the optional
  `base_temperature` argument, off by default: `weight` is the only scale knob.
- Anchors without a positive: "exclude" by default (above); `no_positive: count` is
  SupContrast's behaviour.
- The mean over anchors is over the *global* batch, so W ranks equal one process however the
  anchors without a positive fall on the ranks (SupContrast runs on one process).
- No `+ 1e-9` in the log-denominator and no max-subtraction: `log_softmax` is stable.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from raysl import distributed
from raysl.losses.base import LossTerm, Outputs, Positive
from raysl.losses.kernel import contrast_by_id

NoPositive = Literal["exclude", "count"]


def supcon_loss(
    z: Tensor, ids: Tensor, temperature: float, no_positive: NoPositive = "exclude"
) -> Tensor:
    """L^sup_out over views `z` with ids `ids`: `contrast_by_id` whose mean is over the
    anchors of the *global* batch (those with a positive, or all with "count").

    The kernel averages over this rank's anchors. When some anchors have no positive, ranks
    can hold different numbers of counted anchors, and the mean of the rank means is not the
    global mean; this rescales rank r's value by W·n_r / n, so that the mean over ranks (and,
    through DDP, the gradient) is that of one process on the whole batch.

    Args:
        z: (V, B, D) projections of V views of this rank's B images.
        ids: (B,) labels (SupCon) or dataset indices; equal ids are positives.
        temperature: τ.
        no_positive: "exclude" or "count" anchors without a positive (module docstring).
    """
    count = no_positive == "count"
    loss = contrast_by_id(z, ids, temperature, count_empty=count)
    if z.shape[0] > 1:  # the other views of the same image: every anchor has a positive
        return loss
    return loss * _global_share(ids, loss.dtype, count)  # V = 1: anchors are the images


@torch.no_grad()
def _global_share(anchor_ids: Tensor, dtype: torch.dtype, count_all: bool = False) -> Tensor:
    """W·n_r / n: n_r counted anchors on this rank, n on all ranks; an anchor counts if it
    has a positive (or always, with `count_all`). (N,) -> ()."""
    column_ids = distributed.all_gather(anchor_ids)  # (M,), rank r's anchors at [r*N, (r+1)*N)
    _, inverse, counts = torch.unique(column_ids, return_inverse=True, return_counts=True)
    counted = (counts[inverse] > 1) | count_all  # (M,): its id appears in another column
    start = distributed.rank() * len(anchor_ids)
    mine = counted[start : start + len(anchor_ids)].sum().to(dtype)
    total = counted.sum().clamp(min=1).to(dtype)  # none anywhere: the loss is 0 already
    return mine * distributed.world_size() / total


class SupCon(LossTerm):
    """Supervised contrastive loss L^sup_out: positives are all views with the same label.

    Anchor i (a view of image b on any rank) has positives P(i) = every other view, on any
    rank, whose label equals b's, and its loss is
    -1/|P(i)| Σ_{p∈P(i)} log exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) over all other views (cosine s).
    The value is the mean over anchors with a positive ("exclude") or over all anchors, those
    without a positive counting 0 ("count"). With all-distinct labels and V ≥ 2 it equals
    `InfoNCE` at the same temperature; with one view (V=1) it is SupCon-S, the single-view
    baseline of SelfCon.

    Args:
        temperature: τ. SupContrast uses 0.1 for CIFAR (README, batch 1024); solo-learn 0.2.
        base_temperature: if set, multiply the loss by τ / base_temperature as
            SupContrast does (its default base is 0.07, so at τ=0.1 the loss is x1.43).
            None (default): no factor.
        no_positive: anchors without a positive: "exclude" (default; pytorch-metric-learning,
            SelfCon `supcon_s`) or "count" (HobbitLong/SupContrast). Matters only with V=1.
    """

    MUTABLE = frozenset({"temperature"})

    requires = frozenset({"z", "labels"})

    def __init__(
        self,
        temperature: Positive = 0.1,
        base_temperature: Positive | None = None,
        no_positive: NoPositive = "exclude",
    ):
        super().__init__()
        if no_positive not in ("exclude", "count"):
            raise ValueError(f"no_positive must be 'exclude' or 'count', got {no_positive!r}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.no_positive = no_positive

    def forward(self, out: Outputs) -> Tensor:
        loss = supcon_loss(out.z, out.labels, self.temperature, self.no_positive)
        if self.base_temperature is not None:
            loss = loss * (self.temperature / self.base_temperature)
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"no_positive={self.no_positive!r}"
        )
