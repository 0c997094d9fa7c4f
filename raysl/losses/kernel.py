"""The contrastive kernel: InfoNCE, SupCon and SelfCon differ only in their masks.

solo-learn builds one positive mask from instance ids or labels for SimCLR and SupCon
(vturrisi/solo-learn `solo/losses/simclr.py`); raysl writes the masked log-softmax once and
feeds it masks, with cross-rank negatives from `gather_with_grad`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed


def masked_info_nce(
    logits: Tensor, positives: Tensor, valid: Tensor, count_empty: bool = False
) -> Tensor:
    """Multi-positive InfoNCE: mean over anchors of -Σ_j w_ij log softmax_{V(i)}(l_i)_j / Σ_j w_ij.

    Args:
        logits: (N, M) similarities divided by the temperature.
        positives: (N, M) bool (w = 1 on positives), or float weights w >= 0 (soft positives,
            as potential-sample mining uses); zero off the positives.
        valid: (N, M) bool, True where column j may appear in the denominator; must contain
            every positive, and self-pairs are False.
        count_empty: False: anchors without a positive are left out of the mean (PML,
            SelfCon's `supcon_s`). True: they contribute 0 and count in the mean over all N
            anchors (SupContrast's divisor-1 fix).

    Returns:
        Scalar, never NaN; if no anchor has a positive, 0 with a gradient path to `logits`.
    """
    weights = positives.to(logits.dtype)
    log_prob = logits.masked_fill(~valid, float("-inf")).log_softmax(dim=1)  # (N, M)
    log_prob = log_prob.masked_fill(weights == 0, 0.0)  # -inf * 0 would be NaN
    per_anchor = weights.sum(dim=1)  # (N,)
    has_pos = per_anchor > 0
    if not bool(has_pos.any()):
        return logits.sum() * 0.0
    mean_log_prob = (weights * log_prob).sum(dim=1)[has_pos] / per_anchor[has_pos]
    if count_empty:
        return -mean_log_prob.sum() / len(logits)
    return -mean_log_prob.mean()


def contrast_by_id(z: Tensor, ids: Tensor, temperature: float, count_empty: bool = False) -> Tensor:
    """Views whose ids are equal are positives; every other column is a negative.

    Columns come from all ranks (gathered with gradient), anchors are this rank's rows.

    Args:
        z: (V, B, D) projections of V views of this rank's B images.
        ids: (B,) dataset indices (InfoNCE) or class labels (SupCon); equal ids are positives.
        temperature: τ in exp(cos / τ).
        count_empty: anchors without a positive count in the mean (see `masked_info_nce`).
    """
    views = z.shape[0]
    anchors = F.normalize(z.flatten(0, 1), dim=-1)  # (N, D), N = V*B, view-major
    anchor_ids = ids.repeat(views)  # (N,)
    columns = distributed.gather_with_grad(anchors)  # (M, D), M = W*N
    column_ids = distributed.all_gather(anchor_ids)  # (M,)

    logits = anchors @ columns.T / temperature  # (N, M)
    offset = distributed.rank() * len(anchors)  # this rank's rows sit at [offset, offset + N)
    own = torch.arange(len(anchors), device=z.device)
    valid = torch.ones_like(logits, dtype=torch.bool)
    valid[own, own + offset] = False  # an anchor is not its own negative
    positives = (anchor_ids[:, None] == column_ids[None, :]) & valid
    return masked_info_nce(logits, positives, valid, count_empty)
