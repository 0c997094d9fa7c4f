"""Positive and negative sample mining (Dong, Long & Li, 2023, arXiv:2311.00358) [recon].

"Rethinking Samples Selection for Contrastive Learning: Mining of Potential Samples". No
official code was found (methods.md §5), so the loss below is the reconstruction of
methods.md §5.2, built from the abstract's three constraints: positives are the augmented
views *and* mined neighbours combined with soft and hard weights; negatives are kept only
when they are neither too easy nor too hard, "close to the positive", motivated by the
gradient of the contrastive loss. The base is SimCLR's NT-Xent with cross-rank columns
(`raysl.losses.infonce`); τ defaults to 0.5, the HCL/DCL protocol (`joshr17/HCL`
`image/main.py`) that methods.md §5.2 takes as the paper's likely base recipe (unverified).

Why a band of negatives (the gradient argument). For one anchor with logits s/τ,
l = -log(e^{s+/τ} / (e^{s+/τ} + Σ_k e^{s_k/τ})) has ∂l/∂s_k = p_k / τ, where p_k is negative
k's share of the softmax denominator. An easy negative (s_k << s+) has p_k ≈ 0: it costs
compute and moves nothing. The hardest negatives (s_k ≥ s+) take most of the gradient and
are the likeliest false negatives (same class). Keeping only s+ − δ_lo ≤ s_k ≤ s+ + δ_hi
spends the gradient on informative, probably-true negatives.

Reconstructed choices ([recon], none checked against the paper's text):
- Loss form: the weighted multi-positive InfoNCE of `masked_info_nce`,
  -Σ_j w_j log(e^{s_j/τ} / Z) / Σ_j w_j, with one denominator Z per anchor holding every
  positive (augmented and mined) plus the kept negatives (SupCon's L_out form), rather than
  one InfoNCE per positive as the sketch in methods.md §5.2 writes it.
- Positive weights: each of the V-1 other views of the anchor's image gets γ/(V-1); the
  mined neighbours share 1 − γ. Mined neighbours are the k_pos queue rows most similar to
  the anchor (cosine), weighted by softmax(s/τ_w) over those k_pos, multiplied by a hard
  gate (`threshold`: s ≥ s_hard; `top_r`: rank < top_r among the k_pos) and renormalised.
  When no neighbour passes the gate, the augmented views carry the whole weight. The
  weights are constants (no gradient flows through them), like SupCon's masks.
- Mining source: a FIFO queue (`MemoryBank`) of the first view's detached, normalised
  embeddings of past batches (one row per image, like NNCLR's support set, arXiv:2104.14548),
  gathered over ranks. The queue starts empty and holds `queue_size` rows; the current
  batch is never mined. Queue rows are constants: a mined positive pulls only the anchor.
- The band centre s+ is the anchor's mean cosine to its augmented views (with V=1: the
  weighted mean of its mined positives). `band="quantile"` instead keeps negatives between
  the q_lo and q_hi quantiles (linear interpolation, as `torch.quantile`) of the anchor's
  candidate-negative similarities.
- Negatives are the other images' views of the (gathered) batch and, with
  `queue_negatives=True`, the queue rows; the k_pos nearest queue rows of an anchor are
  never its negatives (whether or not they pass the gate). The positives always stay in
  the denominator, so an anchor whose every negative is filtered out has a finite loss
  (0 with a single positive).
- Before `warmup_epochs` (read from `Outputs.epoch`) the term is plain InfoNCE (no mining,
  every negative): mining on a random embedding would mine noise. The queue fills anyway.
- Similarities, band and quantiles are computed in float32 or wider, outside autocast: a
  bf16 cosine near 1 is off by up to ~4e-3, enough to move negatives across the band.

Differences from the official code: none to list; no official code was found, and the
[recon] choices above are where this term may differ from the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raysl import distributed
from raysl.losses.base import (
    LossTerm,
    NonNegative,
    NonNegativeInt,
    Outputs,
    Positive,
    PositiveInt,
    Probability,
    RunShape,
)
from raysl.losses.kernel import masked_info_nce
from raysl.losses.memory_bank import MemoryBank

Cosine = Annotated[float, Field(ge=-1, le=1)]
_CHUNK = 4096  # queue rows scored at once in the neighbour search: memory O(N x chunk)


class Mining(LossTerm):
    """InfoNCE with mined soft/hard-weighted positives and a band of negatives [recon].

    Anchor i (every view of every image on this rank, N = V*B) has logits s_ij/τ (cosine
    s) against the gathered batch (M = W*N columns), its mined neighbours (k_pos columns) and,
    with `queue_negatives`, the queue (K columns). Its loss is
    -Σ_j w_ij log(e^{s_ij/τ} / Σ_{k∈valid(i)} e^{s_ik/τ}) / Σ_j w_ij, where w is γ/(V-1)
    on the other views of its image and (1−γ)·ŵ on mined neighbours, and valid(i) holds the
    positives and the negatives inside the band. The value is the mean over anchors. See the
    module docstring for the gradient argument and every reconstructed choice.

    Special cases: with the band fully open (δ ≥ 2 or q = (0, 1)) and no mined positive
    (k_pos = 0, γ = 1 or an empty queue) it is `InfoNCE(temperature)`; so it is before
    `warmup_epochs`.

    Args:
        dim: D, the embedding width (filled from the run: `model.proj_dim`).
        temperature: τ of the contrastive softmax (HCL/DCL use 0.5 on CIFAR).
        gamma: γ, the total weight of the augmented views; the mined positives share 1 − γ.
        k_pos: mined neighbours per anchor (0 turns positive mining off).
        tau_w: temperature of the soft weights softmax(s / tau_w) over the k_pos neighbours.
        hard: the hard gate: "threshold" keeps neighbours with cosine ≥ s_hard, "top_r" the
            top_r nearest (top_r ≥ k_pos gates nothing).
        s_hard: cosine threshold of the "threshold" gate.
        top_r: neighbours kept by the "top_r" gate.
        band: "delta" keeps negatives with s+ − delta_lo ≤ s_k ≤ s+ + delta_hi, "quantile"
            those between the q_lo and q_hi quantiles of the anchor's negative similarities.
        delta_lo, delta_hi: the "delta" band below and above the positive similarity s+.
        q_lo, q_hi: the "quantile" band, 0 ≤ q_lo ≤ q_hi ≤ 1.
        queue_size: K, rows of the mining queue (0: no queue, hence no mining).
        queue_negatives: also draw negatives from the queue (MoCo-style), inside the band.
        warmup_epochs: epochs of plain InfoNCE before mining starts (fractional allowed).
    """

    MUTABLE = frozenset(
        {"temperature", "gamma", "tau_w", "s_hard", "delta_lo", "delta_hi", "q_lo", "q_hi"}
    )

    @classmethod
    def run_problems(
        cls, name: str, args: Mapping[str, Any], run: RunShape
    ) -> list[tuple[str, str]]:
        """Also: a quantile band that keeps negatives (q_lo < q_hi), and, with one view, a
        positive to learn from (mined neighbours after the warm-up: the views give none)."""
        found = super().run_problems(name, args, run)
        q_lo, q_hi = args.get("q_lo", 0.25), args.get("q_hi", 0.9)
        if q_lo > q_hi or (q_lo == q_hi and args.get("band") == "quantile"):
            found.append((
                f"loss.{name}.q_lo",
                f"q_lo ({q_lo}) must be below q_hi ({q_hi}): the quantile band keeps the "
                "negatives between the two quantiles, so it would keep none; e.g. q_lo: 0.25, "
                "q_hi: 0.9",
            ))  # fmt: skip
        if run.views == 1:
            why = (
                "k_pos is 0"
                if args.get("k_pos") == 0
                else "queue_size is 0"
                if args.get("queue_size") == 0
                else f"warmup_epochs ({args.get('warmup_epochs')}) >= epochs ({run.epochs})"
                if args.get("warmup_epochs", 0) >= run.epochs
                else ""
            )
            if why:
                found.append((
                    "augment.views",
                    f"with augment.views 1 loss.{name}'s only positives are mined neighbours, "
                    f"and {why}, so it cannot learn; set augment.views: 2, or mine (k_pos > 0, "
                    "queue_size > 0, warmup_epochs < epochs)",
                ))  # fmt: skip
        return found

    requires = frozenset({"z"})

    def __init__(
        self,
        dim: int = 128,
        temperature: Positive = 0.5,
        gamma: Probability = 0.5,
        k_pos: NonNegativeInt = 5,
        tau_w: Positive = 0.1,
        hard: Literal["threshold", "top_r"] = "threshold",
        s_hard: Cosine = 0.5,
        top_r: PositiveInt = 2,
        band: Literal["delta", "quantile"] = "delta",
        delta_lo: NonNegative = 0.3,
        delta_hi: NonNegative = 0.05,
        q_lo: Probability = 0.25,
        q_hi: Probability = 0.9,
        queue_size: NonNegativeInt = 4096,
        queue_negatives: bool = False,
        warmup_epochs: NonNegative = 10.0,
    ) -> None:
        super().__init__()
        if q_lo > q_hi:
            raise ValueError(f"mining: q_lo ({q_lo}) must be <= q_hi ({q_hi})")
        self.temperature, self.gamma = temperature, gamma
        self.k_pos, self.tau_w = k_pos, tau_w
        self.hard, self.s_hard, self.top_r = hard, s_hard, top_r
        self.band, self.delta_lo, self.delta_hi = band, delta_lo, delta_hi
        self.q_lo, self.q_hi = q_lo, q_hi
        self.queue_negatives, self.warmup_epochs = queue_negatives, warmup_epochs
        self.queue = MemoryBank(queue_size, dim)  # persistent: part of every checkpoint

    def forward(self, out: Outputs) -> Tensor:
        with torch.autocast(out.z.device.type, enabled=False):
            anchors = _normalized(out.z)  # (N, D), view-major
            loss = masked_info_nce(*self._pairs(anchors, out.sample_ids, out.epoch))
        if self.training:  # after the loss: the current batch is never its own neighbour
            batch = out.z.shape[1]
            self.queue.push(anchors[:batch], out.labels, out.sample_ids)
        return loss

    def pairs(self, out: Outputs) -> tuple[Tensor, Tensor, Tensor]:
        """What `forward` feeds to `masked_info_nce`, for inspection (the queue is not updated).

        Returns:
            logits (N, C), positive weights (N, C) and valid (N, C) bool, where the C columns
            are [gathered batch (M) | mined neighbours (k) | queue (K, with queue_negatives)].
        """
        with torch.autocast(out.z.device.type, enabled=False):
            return self._pairs(_normalized(out.z), out.sample_ids, out.epoch)

    def _pairs(self, anchors: Tensor, sample_ids: Tensor, epoch: float) -> tuple[Tensor, ...]:
        n = len(anchors)
        views = n // len(sample_ids)
        ids = sample_ids.repeat(views)  # (N,)
        columns = distributed.gather_with_grad(anchors)  # (M, D), M = W*N
        column_ids = distributed.all_gather(ids)  # (M,)
        sim = anchors @ columns.T  # (N, M)
        own = torch.arange(n, device=anchors.device)
        not_self = torch.ones_like(sim, dtype=torch.bool)
        not_self[own, own + distributed.rank() * n] = False
        augmented = (ids[:, None] == column_ids[None, :]) & not_self  # (N, M)
        if epoch < self.warmup_epochs:  # plain InfoNCE
            return sim / self.temperature, augmented.to(sim.dtype), not_self

        # --- positives: the other views (γ) and mined neighbours (1 - γ) ---
        keys = self.queue.read()[0].to(anchors.dtype, copy=True)  # (K, D); push() writes in place
        mined_sim, mined_idx, mined_w = self._mine(anchors.detach(), keys)  # (N, k) each
        mined_logits = (anchors[:, None, :] * keys[mined_idx]).sum(-1)  # (N, k), grad to anchors
        has_mined = mined_w.sum(dim=1) > 0
        n_aug = augmented.sum(dim=1)  # (N,)
        aug_total = torch.where(has_mined, self.gamma, 1.0).to(sim.dtype)
        aug_w = augmented * (aug_total / n_aug.clamp_min(1))[:, None]  # (N, M)
        mined_w = (1 - self.gamma) * mined_w
        mined_valid = mined_w > 0

        # --- negatives: inside the band around the positive similarity ---
        s = sim.detach()
        s_pos = (s * augmented).sum(dim=1) / n_aug.clamp_min(1)  # (N,) band centre
        from_mined = (mined_w * mined_sim).sum(dim=1) / mined_w.sum(dim=1).clamp_min(1e-30)
        s_pos = torch.where(n_aug > 0, s_pos, from_mined)
        candidates = [not_self & ~augmented]  # (N, M)
        sims, logits = [s], [sim, mined_logits]
        if self.queue_negatives and len(keys):
            queue_logits = anchors @ keys.T  # (N, K)
            not_mined = torch.ones_like(queue_logits, dtype=torch.bool)
            not_mined.scatter_(1, mined_idx, False)  # neighbours are never negatives
            candidates.append(not_mined)
            sims.append(queue_logits.detach())
            logits.append(queue_logits)
        candidate = torch.cat(candidates, dim=1)
        keep = candidate & self._in_band(torch.cat(sims, dim=1), candidate, s_pos)
        keep_batch, keep_queue = keep.split([sim.shape[1], keep.shape[1] - sim.shape[1]], dim=1)

        logits_all = torch.cat(logits, dim=1) / self.temperature
        weights = torch.cat([aug_w, mined_w, torch.zeros_like(keep_queue, dtype=sim.dtype)], 1)
        valid = torch.cat([augmented | keep_batch, mined_valid, keep_queue], dim=1)
        return logits_all, weights, valid

    @torch.no_grad()
    def _mine(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The k = min(k_pos, K) nearest queue rows of each query: cosine (N, k), row (N, k)
        and gated, renormalised soft weight (N, k) (rows summing to 1, or 0 if all gated)."""
        k = min(self.k_pos, len(keys))
        top_sim, top_idx = _nearest(queries, keys, k)
        soft = (top_sim / self.tau_w).softmax(dim=1)
        if self.hard == "threshold":
            gate = top_sim >= self.s_hard
        else:
            gate = (torch.arange(k, device=queries.device) < self.top_r).expand_as(top_sim)
        weights = soft * gate
        total = weights.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, weights / total.clamp_min(1e-30), 0.0)
        return top_sim, top_idx, weights

    def _in_band(self, sims: Tensor, candidate: Tensor, s_pos: Tensor) -> Tensor:
        """(N, C) bool: similarity inside this anchor's band (detached inputs)."""
        if self.band == "delta":
            lo, hi = s_pos - self.delta_lo, s_pos + self.delta_hi
        else:
            lo = _masked_quantile(sims, candidate, self.q_lo)
            hi = _masked_quantile(sims, candidate, self.q_hi)
        return (sims >= lo[:, None]) & (sims <= hi[:, None])


def _normalized(z: Tensor) -> Tensor:
    """(V, B, D) -> (N, D) unit rows, in float32 or wider."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return F.normalize(z.flatten(0, 1), dim=-1)


@torch.no_grad()
def _nearest(queries: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k cosine (N, k) and row (N, k) of `keys` (K, D) per query, descending, chunked."""
    best = queries.new_empty(len(queries), 0)
    best_idx = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    if k == 0:
        return best, best_idx
    for start in range(0, len(keys), _CHUNK):  # merge each chunk's top-k into the best so far
        sims = queries @ keys[start : start + _CHUNK].T  # (N, chunk)
        top, rows = sims.topk(min(k, sims.shape[1]), dim=1)
        best, best_idx = torch.cat([best, top], dim=1), torch.cat([best_idx, rows + start], dim=1)
        best, order = best.topk(min(k, best.shape[1]), dim=1)
        best_idx = best_idx.gather(1, order)
    return best, best_idx


def _masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """Per-row q-quantile (N,) of `values` (N, C) where `mask`, interpolated linearly between
    order statistics as `torch.quantile`; 0 for rows with no masked entry."""
    count = mask.sum(dim=1)
    ordered = values.masked_fill(~mask, float("inf")).sort(dim=1).values
    position = q * (count - 1).clamp_min(0).double()
    position = torch.where((position - position.round()).abs() < 1e-9, position.round(), position)
    below, above = position.floor().long(), position.ceil().long()
    low = ordered.gather(1, below[:, None]).squeeze(1)
    high = ordered.gather(1, above[:, None]).squeeze(1)
    fraction = (position - below).to(values.dtype)
    value = torch.where(above > below, low + fraction * (high - low), low)
    return torch.where(count > 0, value, torch.zeros_like(value))
