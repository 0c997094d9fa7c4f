"""Similarity loss -> feature-level cross-entropy ("ICC"): Ge et al., "Learning the Relation
between Similarity Loss and Clustering Loss in Self-Supervised Learning", IEEE TIP 32 (2023),
arXiv:2301.03041.

Official code: guijiejie/ICCL, `modules/head/icc_head.py` (`ICCHead`, `MomentumICCHead`),
`modules/head/utilsfns.py` (`D`, `PCA`, `shoot_infs`), `modules/head/icc_backup.py` (`maxscale`).
No part of this term is [recon]: every formula is read from that code. Where raysl departs
from it, the `ICC` docstring's "Differences from the official code" says so and why.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed
from raysl.losses.base import LossTerm, NonNegative, Outputs, Positive, Probability
from raysl.losses.similarity import cross_view_similarity


class ICC(LossTerm):
    """Instance similarity first, then a cross-entropy between feature-dimension "assignments".

    Per pair of views (i, j), with targets q (detached), predictions p, n(.) = L2 normalisation:

        m_i = softmax(n(q_i) / tau2)                          over the D dims, detached
        n_i = softmax(n(p_i) / t_i),  t_i = tau1, or ||m_j||_2 if adaptive
        L_aug  = -(mean_b sum_d m_i log n_j + mean_b sum_d m_j log n_i) / 2
        pbar   = (sum_b n_i + sum_b n_j) / (2 B)             over the *global* batch
        L_unif = -(log D + mean_d log pbar_d)                 = KL(uniform || pbar) >= 0
        L      = s(e) * mean_pairs(ratio * L_unif + L_aug) + (1 - s(e)) * L_sim

    with s(e) = maxscale * clip((e - switch_start) / (switch_end - switch_start), 0, 1), where
    e is the integer epoch (`switch_per: epoch`, ICCL) or the fractional epoch of the step
    (`switch_per: step`). The similarity part, with c(v, w) = cos(p_v, q_w) averaged over the
    batch and over the ordered view pairs v != w:

        sim_scale None (default), momentum=False:  L_sim = -mean c            (ICCHead: -cos)
        sim_scale None (default), momentum=True:   L_sim = 2 mean (2 - 2c)    (MomentumICCHead:
                                                   ||n(p1) - n(q2)||^2 + ||n(p2) - n(q1)||^2)
        sim_scale = a:                              L_sim = a * mean (2 - 2c)  (a x `Similarity`)

    So the defaults reproduce each official head exactly, value and gradient, and before
    `switch_start` the term is SimSiam's loss (momentum=False) or BYOL's summed loss
    (momentum=True); `sim_scale: 1` makes it equal to the `similarity` term instead, and
    0.5 / 2 give the heads' gradients (ICCHead's value then differs by the constant 1).

    Two variants, as in the official code:
        momentum=False (`ICCHead`, SimSiam-like): q = the online projection z, detached.
            Adaptive temperature t_i = ||m_j||_2, unclipped.
        momentum=True (`MomentumICCHead`, BYOL-like): q = the EMA target's projection. Adaptive
            temperature t_i = min(||m_j||_2, tau1), clipped as that class does.

    Distributed: `pbar` is summed over ranks with `all_reduce_with_grad`, and PCA is fitted on
    the targets gathered from every rank (detached), so every rank uses the same statistics and
    the loss and gradients equal one process on the global batch.

    Differences from the official code:
        * log n uses `log_softmax` instead of `log(softmax)` + `shoot_infs`: identical where
          finite, and never -inf.
        * PCA uses `torch.linalg.eigh` in the targets' precision (the code's `torch.eig`, on
          a float32 covariance, was removed from PyTorch), and fixes each eigenvector's sign so
          that its largest-magnitude entry is positive; ICCL keeps whatever signs the solver
          returns. The softmax over dims is not sign-invariant, so values after the switch
          differ from ICCL's wherever the solvers' signs differ; a fixed convention makes the
          term deterministic and identical on every rank.
        * PCA is fitted on the global batch (all ranks' targets); ICCL fits it per GPU on the
          local batch. Identical on one process.
        * PCA with momentum=True is raysl's addition (`MomentumICCHead` has none).
        * More than two views: the term is averaged over all view pairs i < j, each with its
          own PCA. That is ICCHead's multi-crop path with every view in its first crop list
          (x1 = the V views, x2 empty); ICCL's own loop only ever passes two tensors, where
          both agree. raysl has no second crop list, so ICCL's rule of leaving out the pairs
          within x2 has nothing to apply to. `MomentumICCHead` uses only its first two views;
          raysl uses every pair rather than dropping views the config asked for.
        * `switch_per: step` (not the default) moves s every step instead of every epoch.

    Args:
        tau1: temperature of the online softmax n (the cap of the adaptive temperature when
            momentum=True).
        tau2: temperature of the target softmax m; <= tau1 sharpens the targets.
        ratio: r, the weight of the uniformity term L_unif (ImageNette 1, ImageNet 5).
        adaptive: per-sample online temperature ||m_other||_2 (detached) instead of tau1.
        pca: before the softmaxes, map q and p by x -> n((n(x) - mu) W), with mu and W the
            mean and the full-dimension eigenvectors (descending eigenvalues) of the
            L2-normalised targets of the pair over the global batch (the code's
            `pca=dict(dim=D, l2norm=True)`).
        momentum: False = `ICCHead` (targets: z detached; requires {"p", "z"}); True =
            `MomentumICCHead` (targets: the EMA target; requires {"p", "z_target"}).
        switch_start, switch_end: epochs E0 <= E1 of the linear switch s(e) from L_sim to the
            clustering loss. The official default [0, 0] (clustering loss from the start);
            the ImageNette recipe is [500, 600] of 1000 epochs, ImageNet [150, 180] of 300.
        switch_per: "epoch" (default, ICCL): s follows the integer epoch, so a ramp of 10
            epochs moves in 10 steps; "step": s follows the fractional epoch (a smooth ramp).
        maxscale: cap on s (`icc_backup.py`); < 1 keeps (1 - maxscale) of L_sim for good.
        sim_scale: None (default): the official head's L_sim (above); a number a: L_sim =
            a x the `Similarity` term's mean of 2 - 2 cos, a knob for studies.
    """

    MUTABLE = frozenset({"tau1", "tau2", "ratio", "maxscale"})
    min_views = 2  # it regresses each view onto the others

    def __init__(
        self,
        tau1: Positive = 0.1,
        tau2: Positive = 0.07,
        ratio: NonNegative = 1.0,
        adaptive: bool = False,
        pca: bool = False,
        momentum: bool = False,
        switch_start: NonNegative = 0.0,
        switch_end: NonNegative = 0.0,
        switch_per: Literal["epoch", "step"] = "epoch",
        maxscale: Probability = 1.0,
        sim_scale: Positive | None = None,
    ) -> None:
        super().__init__()
        if switch_end < switch_start:
            raise ValueError(f"switch_end ({switch_end}) must be >= switch_start ({switch_start})")
        if switch_per not in ("epoch", "step"):
            raise ValueError(f"switch_per must be 'epoch' or 'step', got {switch_per!r}")
        self.tau1, self.tau2, self.ratio = tau1, tau2, ratio
        self.adaptive, self.pca, self.momentum = adaptive, pca, momentum
        self.switch_start, self.switch_end, self.switch_per = switch_start, switch_end, switch_per
        self.maxscale, self.sim_scale = maxscale, sim_scale
        self.requires = frozenset({"p", "z_target"} if momentum else {"p", "z"})

    def scale(self, epoch: float) -> float:
        """s(e): 0 before switch_start, linear to maxscale at switch_end, then maxscale; e is
        the integer epoch (switch_per "epoch") or the fractional one ("step")."""
        if self.switch_per == "epoch":
            epoch = math.floor(epoch)
        if epoch < self.switch_start:
            ramp = 0.0
        elif epoch < self.switch_end:
            ramp = (epoch - self.switch_start) / (self.switch_end - self.switch_start)
        else:
            ramp = 1.0
        return self.maxscale * ramp

    def similarity(self, p: Tensor, q: Tensor) -> Tensor:
        """L_sim for predictions p and detached targets q, (V, B, D) each: the official head's
        form (sim_scale None) or sim_scale x the mean of 2 - 2 cos."""
        mean_distance = cross_view_similarity(p, q)  # mean over pairs and batch of 2 - 2 cos
        if self.sim_scale is not None:
            return self.sim_scale * mean_distance
        if self.momentum:  # MomentumICCHead: the sum of both directions' 2 - 2 cos
            return 2 * mean_distance
        return mean_distance / 2 - 1  # ICCHead: -mean cos

    def forward(self, out: Outputs) -> Tensor:
        assert out.p is not None, "icc needs predictor outputs ('p')"
        if self.momentum:
            assert out.z_target is not None, "icc with momentum=True needs 'z_target'"
            q = out.z_target
        else:
            q = out.z
        p, q = _at_least_float32(out.p), _at_least_float32(q.detach())  # (V, B, D)
        s = self.scale(out.epoch)  # the same on every rank: the epoch is global
        loss = p.new_zeros(())
        if s < 1:
            loss = loss + (1 - s) * self.similarity(p, q)
        if s > 0:
            views = p.shape[0]
            with _no_autocast(p):  # softmax over dims at tau2 ~ 0.07 needs fp32 logits
                pairs = [
                    self.clustering(p[i], p[j], q[i], q[j])
                    for i in range(views)
                    for j in range(i + 1, views)
                ]
            loss = loss + s * torch.stack(pairs).mean()
        return loss

    def clustering(self, p1: Tensor, p2: Tensor, q1: Tensor, q2: Tensor) -> Tensor:
        """ratio * L_unif + L_aug for one view pair; p (B, D) online, q (B, D) detached targets."""
        if self.pca:
            mean, basis = fit_pca(
                torch.cat([distributed.all_gather(q1), distributed.all_gather(q2)])  # (2WB, D)
            )
            p1, p2, q1, q2 = (_pca_transform(x, mean, basis) for x in (p1, p2, q1, q2))
        log_m1 = F.log_softmax(F.normalize(q1, dim=1) / self.tau2, dim=1)  # (B, D)
        log_m2 = F.log_softmax(F.normalize(q2, dim=1) / self.tau2, dim=1)
        m1, m2 = log_m1.exp(), log_m2.exp()
        if self.adaptive:  # view 1's online temperature comes from view 2's target, and back
            t1, t2 = m2.norm(dim=1, keepdim=True), m1.norm(dim=1, keepdim=True)  # (B, 1)
            if self.momentum:  # MomentumICCHead clips at tau1; ICCHead does not
                t1, t2 = t1.clamp(max=self.tau1), t2.clamp(max=self.tau1)
        else:
            t1 = t2 = self.tau1  # type: ignore[assignment]
        log_n1 = F.log_softmax(F.normalize(p1, dim=1) / t1, dim=1)  # (B, D)
        log_n2 = F.log_softmax(F.normalize(p2, dim=1) / t2, dim=1)
        loss_aug = -((m1 * log_n2).sum(1).mean() + (m2 * log_n1).sum(1).mean()) / 2

        batch, dim = p1.shape
        mass = distributed.all_reduce_with_grad(log_n1.exp().sum(0) + log_n2.exp().sum(0))  # (D,)
        pbar = mass / (2 * batch * distributed.world_size())  # marginal over the global batch
        tiny = torch.finfo(pbar.dtype).tiny  # keeps log finite if a dim's mass underflows
        loss_unif = -(math.log(dim) + pbar.clamp_min(tiny).log().mean())
        return self.ratio * loss_unif + loss_aug

    def extra_repr(self) -> str:
        return (
            f"tau1={self.tau1}, tau2={self.tau2}, ratio={self.ratio}, adaptive={self.adaptive}, "
            f"pca={self.pca}, momentum={self.momentum}, switch=[{self.switch_start}, "
            f"{self.switch_end}] per {self.switch_per}, maxscale={self.maxscale}, "
            f"sim_scale={self.sim_scale}"
        )


@torch.no_grad()
def fit_pca(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and full-dimension principal axes of the L2-normalised rows of `x`.

    Args:
        x: (M, D) detached targets (the same on every rank).

    Returns:
        mean (D,) and basis (D, D) whose columns are the eigenvectors of the biased covariance
        (1/M) X_c^T X_c in descending eigenvalue order, each with its largest-magnitude entry
        positive.
    """
    x = F.normalize(x, dim=1)
    mean = x.mean(0)
    centred = x - mean
    covariance = centred.T @ centred / len(x)  # (D, D)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    vectors = vectors.flip(1)  # descending
    peak = vectors.abs().argmax(0, keepdim=True)  # (1, D)
    return mean, vectors * torch.sign(vectors.gather(0, peak))  # unit columns: sign is +-1


def _pca_transform(x: Tensor, mean: Tensor, basis: Tensor) -> Tensor:
    """n((n(x) - mean) @ basis): differentiable in x; (B, D) -> (B, D)."""
    return F.normalize((F.normalize(x, dim=1) - mean) @ basis, dim=1)


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _no_autocast(x: Tensor):  # type: ignore[no-untyped-def]
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()
