"""InfoNCE: SimCLR's NT-Xent and, with a queue, MoCo v2's loss.

SimCLR: Chen et al., 2020, arXiv:2002.05709, eq. 1 (no queue). MoCo: He et al., 2020,
arXiv:1911.05722, Algorithm 1; MoCo v2: Chen et al., 2020, arXiv:2003.04297. Official code:
facebookresearch/moco `moco/builder.py` (logits [q·k+, q·queue]/T, cross-entropy at label 0,
`_dequeue_and_enqueue` of the gathered keys after the loss) and the symmetric two-view form of
vturrisi/solo-learn `solo/methods/mocov2plus.py`.

Differences from the official MoCo v2 code, all deliberate:
- Symmetric, as solo-learn's MoCo V2+: every view is a query, and its positive is the
  EMA-target key of each other view (official MoCo v2 uses only im_q -> im_k).
- One queue holding the keys of every view (solo-learn keeps one queue per view and contrasts
  a view-1 query with view-2 keys only). Each image adds V keys per step, so K rows hold the
  last K/V images.
- The queue starts empty, not with random unit vectors: a step with an empty queue has no
  negatives, so its loss is log 1 = 0 with zero gradient (only the first step of a run).
- No shuffle-BN inside the loss (the model owns batch norm; raysl uses SyncBN when distributed,
  as solo-learn does).
- Any batch size works (the official code asserts K % batch == 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.losses.base import LossTerm, NonNegativeInt, Outputs, Positive
from raysl.losses.kernel import contrast_by_id
from raysl.losses.memory_bank import MemoryBank


def at_least_float32(x: Tensor) -> Tensor:
    """bf16/fp16 (autocast) -> float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def moco_nll(q: Tensor, keys: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's per-query loss -log e^{q·k/τ} / (e^{q·k/τ} + Σ_r e^{q·queue_r/τ}) for P positives.

    Each positive gets its own cross-entropy over {k} ∪ queue, as MoCo (and Un-Mix for its two
    mixture positives): the other positives are not negatives.

    Args:
        q: (N, D) L2-normalised queries; gradients flow through them.
        keys: (P, N, D) L2-normalised positive keys (detached by the caller).
        queue: (K, D) L2-normalised negatives, K >= 0 (no negatives gives 0).
        temperature: τ.

    Returns:
        (P, N) losses, float32 or wider.
    """
    pos = at_least_float32((q[None] * keys).sum(-1)) / temperature  # (P, N)
    neg = at_least_float32(q @ queue.T.to(q.dtype)) / temperature  # (N, K)
    # logaddexp(pos, logsumexp(neg)) = log of MoCo's softmax denominator, without an (N, 1+K)
    # copy per positive; an empty queue gives logsumexp = -inf and a loss of exactly 0.
    return torch.logaddexp(pos, neg.logsumexp(dim=1)[None]) - pos


class InfoNCE(LossTerm):
    """NT-Xent (SimCLR) without a queue; MoCo v2 with `queue_size > 0`.

    queue_size = 0 (SimCLR): each view's positives are the other views of the same image.
    With V=2 views of B images on each of W ranks, anchor i's loss is
    -log exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) over all 2·W·B - 1 other views (cosine s);
    with V>2 it is the mean of that over the V-1 positives. The value is the mean over anchors.

    queue_size > 0 (MoCo v2): queries are the online projections q of each view; the positive
    of query (v, i) is the EMA-target key k of another view u ≠ v of image i; the negatives are
    only the queue of past keys (as MoCo v2: in-batch keys of other images are *not*
    negatives). Per query and positive, -log e^{q·k+/τ} / (e^{q·k+/τ} + Σ_r e^{q·queue_r/τ});
    the value is the mean over this rank's V·B queries and their V-1 positives (V=2: the mean
    of the two directions, solo-learn's symmetric loss). Then the keys of every view of every
    rank are enqueued (training mode only); the queue is identical on all ranks and is part of
    the state dict (checkpoints). Needs the EMA target ("z_target"); see the module docstring
    for the differences from the official code.

    Args:
        temperature: τ. SimCLR uses 0.5 on CIFAR and 0.1–0.2 with large batches; MoCo v2 0.2.
        queue_size: K, keys kept in MoCo's queue; 0 = SimCLR (no queue, no EMA target).
        dim: D, the projection width (filled by the run from model.proj_dim).
    """

    requires = frozenset({"z"})

    def __init__(
        self, temperature: Positive = 0.2, queue_size: NonNegativeInt = 0, dim: int = 128
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.queue_size = queue_size
        # no bank at all without a queue: the state dict (checkpoints) stays as SimCLR's
        self.queue = MemoryBank(queue_size, dim) if queue_size > 0 else None
        if queue_size > 0:
            self.requires = frozenset({"z", "z_target"})

    def forward(self, out: Outputs) -> Tensor:
        if self.queue is None:
            return contrast_by_id(out.z, out.sample_ids, self.temperature)
        return self._moco(out)

    def _moco(self, out: Outputs) -> Tensor:
        assert self.queue is not None
        if out.z_target is None:
            raise ValueError("InfoNCE with a queue (MoCo) needs the EMA target ('z_target')")
        views = out.z.shape[0]
        if views < 2:
            raise ValueError(f"MoCo needs at least 2 views, got {views}")
        q = F.normalize(out.z, dim=-1)  # (V, B, D)
        k = F.normalize(out.z_target.detach(), dim=-1)  # (V, B, D), no gradient to keys
        queue = self.queue.read()[0].clone()  # (K', D); a copy: push() writes in place
        losses = [
            moco_nll(q[v], k[[u for u in range(views) if u != v]], queue, self.temperature)
            for v in range(views)
        ]  # V x (V-1, B)
        loss = torch.stack(losses).mean()
        if self.training:
            push_keys(self.queue, k, out)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, queue_size={self.queue_size}"


def push_keys(bank: MemoryBank, keys: Tensor, out: Outputs) -> None:
    """Enqueue the keys (V, B, D) of every view, image-major, with their ids and labels.

    Image-major rows (image 0 view 0, image 0 view 1, ...) gathered in rank order are exactly
    the rows of one process on the concatenated batch, so the queue does not depend on W.
    """
    views = keys.shape[0]
    labels = out.labels.repeat_interleave(views) if out.labels is not None else None
    bank.push(keys.transpose(0, 1).flatten(0, 1), labels, out.sample_ids.repeat_interleave(views))
