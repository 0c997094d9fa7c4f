"""InfoNCE: SimCLR's NT-Xent and, with a queue, MoCo v2's loss.

SimCLR: Chen et al., 2020, arXiv:2002.05709, eq. 1 (no queue). MoCo: He et al., 2020,
arXiv:1911.05722, Algorithm 1; MoCo v2: Chen et al., 2020, arXiv:2003.04297. Official code:
facebookresearch/moco `moco/builder.py` (logits [q·k+, q·queue]/T, cross-entropy at label 0,
`_dequeue_and_enqueue` of the gathered keys after the loss) and the symmetric two-view form of
vturrisi/solo-learn `solo/methods/mocov2plus.py` (MoCo V2+).

Which setting reproduces which code:
- `queue_size: 0`: SimCLR's NT-Xent (google-research/simclr, lightly `NTXentLoss` without a
  memory bank, pytorch-metric-learning `NTXentLoss`).
- `queue_size > 0, symmetric: false`: facebookresearch/moco v2 and lightly's `NTXentLoss` in
  memory-bank mode: query view 1 against key view 2, the B keys of view 2 enqueued once per
  step.
- `queue_size > 0, symmetric: true` (default): solo-learn's MoCo V2+ loss, the mean of
  (q1, k2) and (q2, k1), with one queue instead of solo-learn's two (below).

Differences from the official code, all deliberate:
- symmetric=true keeps one queue of the view-2 keys (B rows per step, the same queue as
  symmetric=false); solo-learn keeps one queue per view and contrasts q2 with the view-1
  queue. The (q1, k2) half is therefore solo-learn's exactly, and the (q2, k1) half differs
  only in which augmentation the negatives were drawn with (the same distribution under a
  symmetric augmentation preset). Either way a queue holds each image at most once per step,
  so K rows hold the last K images (while the dataset is larger than K).
- The queue starts empty, not with random unit vectors: a step with an empty queue has no
  negatives, so its loss is log 1 = 0 with zero gradient (only the first step of a run).
- No shuffle-BN inside the loss (the model owns batch norm; raysl uses SyncBN when distributed,
  as solo-learn does).
- Any batch size works (the official code asserts K % batch == 0).
- V > 2 views (not in the official code): symmetric=true makes every view a query against
  the keys of every other view; symmetric=false makes view 1 the only query, against the keys
  of views 2..V. The queue holds view 2's keys in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import ConfigError, Problem
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

    queue_size > 0 (MoCo v2): queries are the online projections q, keys the EMA-target
    projections k; the negatives are only the queue of past keys (as MoCo v2: in-batch keys of
    other images are *not* negatives). Per query and positive key,
    -log e^{q·k+/τ} / (e^{q·k+/τ} + Σ_r e^{q·queue_r/τ}), averaged over this rank's pairs:
        symmetric=False: query view 1 with key view 2 (MoCo v2; with V>2 also keys 3..V);
        symmetric=True: every view v a query with the key of every other view u ≠ v
            (V=2: the mean of the two directions, solo-learn's symmetric loss).
    Then, in training mode only, the B keys of view 2 of every rank are enqueued: one row per
    image per step in both modes. The queue is identical on all ranks and is part of the state
    dict (checkpoints). Needs the EMA target ("z_target"); the module docstring lists which
    setting reproduces which official code and the differences.

    Args:
        temperature: τ. SimCLR uses 0.5 on CIFAR and 0.1–0.2 with large batches; MoCo v2 0.2.
        queue_size: K, keys kept in MoCo's queue; 0 = SimCLR (no queue, no EMA target).
        symmetric: with a queue, every view is a query (True, default: solo-learn's MoCo V2+,
            the recipe of the shipped MoCo search spaces) or only view 1 is (False:
            facebookresearch/moco v2). False needs a queue (SimCLR is symmetric by definition).
        dim: D, the projection width (filled by the run from model.proj_dim).
    """

    MUTABLE = frozenset({"temperature"})
    min_views = 2  # its positives are the other views of an image

    requires = frozenset({"z"})

    def __init__(
        self,
        temperature: Positive = 0.2,
        queue_size: NonNegativeInt = 0,
        symmetric: bool = True,
        dim: int = 128,
    ) -> None:
        super().__init__()
        if not symmetric and queue_size == 0:
            raise ConfigError(
                Problem(
                    "symmetric: false is MoCo v2's one-sided loss and needs a queue: set "
                    "loss.infonce.queue_size > 0 (e.g. 16384) or symmetric: true",
                    "loss.infonce.symmetric",
                )
            )
        self.temperature = temperature
        self.queue_size = queue_size
        self.symmetric = symmetric
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
        queries = range(views) if self.symmetric else range(1)
        losses = [
            moco_nll(q[v], k[[u for u in range(views) if u != v]], queue, self.temperature)
            for v in queries
        ]  # V (or 1) x (V-1, B)
        loss = torch.stack(losses).mean()
        if self.training:
            push_keys(self.queue, k[KEY_VIEW], out)
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, queue_size={self.queue_size}, "
            f"symmetric={self.symmetric}"
        )


# MoCo's im_k: the view whose keys are enqueued (0-based; "view 2" in the docstrings)
KEY_VIEW = 1


def push_keys(bank: MemoryBank, keys: Tensor, out: Outputs) -> None:
    """Enqueue one key per image, (B, D), with its dataset index and label.

    Rows gathered in rank order are exactly the rows of one process on the concatenated
    batch, so the queue does not depend on W; each image enters once per step.
    """
    bank.push(keys, out.labels, out.sample_ids)
