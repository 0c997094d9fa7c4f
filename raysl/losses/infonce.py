"""InfoNCE / NT-Xent, the SimCLR loss (Chen et al., 2020, arXiv:2002.05709, eq. 1)."""

from __future__ import annotations

from torch import Tensor

from raysl.losses.base import LossTerm, Outputs, Positive
from raysl.losses.kernel import contrast_by_id


class InfoNCE(LossTerm):
    """NT-Xent: each view's positives are the other views of the same image.

    With V=2 views of B images on each of W ranks, anchor i's loss is
    -log exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) over all 2·W·B - 1 other views (cosine s);
    with V>2 it is the mean of that over the V-1 positives. The value is the mean over anchors.

    Args:
        temperature: τ. SimCLR uses 0.5 on CIFAR and 0.1–0.2 with large batches.
    """

    requires = frozenset({"z"})

    def __init__(self, temperature: Positive = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, out: Outputs) -> Tensor:
        return contrast_by_id(out.z, out.sample_ids, self.temperature)
