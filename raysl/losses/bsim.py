"""BSIM: spurious-positive mixtures of two instances (Chu, Zhan, Wei / Zhang; arXiv:2011.13356).

v1: "Beyond Single Instance Multi-view Unsupervised Representation Learning" (2020); v2: "A
Unified Mixture-View Framework for Unsupervised Representation Learning" (BMVC 2022). No
official code was found. The abstract fixes the idea: mix two random instances x_i, x_j into
x_m and learn the joint similarity of x_m with both, as an add-on to SimCLR, MoCo, BYOL and
SimSiam.

[recon] The loss is reconstructed (raysl `methods.md` §2.2) on the verified template of
szq0214/Un-Mix `UnMix_MoCo/for_ImageNet/main_moco_unmix.py` (+ its `moco/builder.py`): one
λ ~ Beta(α, α) per batch, the batch mixed with its reversed copy by mixup or CutMix (λ then
reset to the kept pixel fraction), the mixture encoded by the query (online) network, and
`loss_o + λ·CE(mix, k_i) + (1−λ)·CE(mix, k_j)`. This term is only the mixture part

    L_BSIM = mean over mixtures m = (i, j) of  λ·l(z_m, k_i) + (1 − λ)·l(z_m, k_j),

and the base method's own loss (loss_o) is a separate term, e.g. `infonce` weight 1 plus
`bsim` weight w. Decisions, each [recon] unless it cites code:
- k_i, k_j: the keys of *another* view u = (v+1) mod V of images i and j, for a mixture of
  view v (Un-Mix mixes im_q and takes keys of im_k).
- base="infonce" (SimCLR): z_m and the keys are L2-normalised online projections; the
  candidates are the other view's projections of every image of every rank (gathered, with
  gradient, as SimCLR's keys have), and l is the λ-weighted soft-target cross-entropy over
  them (the i-Mix form, Lee et al., 2021, arXiv:2010.08887). So k_j *is* a candidate
  (negative) of the i-term and vice versa; the weighted sum makes each a positive of its own
  term. Same-view columns and the mixtures are not candidates, so at λ = 1 this is the
  cross-view InfoNCE -log e^{q_i·k_i/τ} / Σ_j e^{q_i·k_j/τ}, not NT-Xent (whose denominator
  also holds same-view negatives).
- base="moco": z_m is the online projection, keys are EMA-target projections (no gradient),
  and each of the two terms is a separate cross-entropy over {k+} ∪ queue [code: Un-Mix
  builder, logits_m and logits_m_flip]; the term keeps its own queue of the clean keys of
  view 2 (MoCo's im_k; one row per image per step, as `infonce` with a queue: with both
  terms active the two queues hold the same keys). At λ = 1 it equals `infonce` with the
  same queue.
- base="byol"/"simsiam": l = ||n(p_m) − n(sg k)||² = 2 − 2 cos, with p_m the online predictor
  output of the mixture and k the EMA-target (BYOL) or stop-gradient online (SimSiam)
  projection. At λ = 1 it equals `similarity` (target "ema" / "stopgrad").
- symmetric=True mixes both views (each keyed on the other, the mean of both); False mixes
  view 0 only, as Un-Mix.
- Partners come from the same rank's batch (reverse order, or a random permutation, which
  may pair an image with itself: then the mixture is the image itself); the same λ, box and
  permutation on every rank (one generator seed per step).
- mix_op="random" picks mixup or CutMix with probability 1/2 per batch (Un-Mix's
  `unmix_prob` knob at 0.5; its default 0 means CutMix only).
- Temperature: one τ for the mixtures (Un-Mix's builder divides its mixture logits by the
  base T too, although it also parses an unused T_m).

Differences from the official code: none to list; BSIM has no official code, and the [recon]
decisions above are where this term may differ from the paper.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed
from raysl.errors import ConfigError, Problem
from raysl.losses.base import LossTerm, NonNegativeInt, Outputs, Positive
from raysl.losses.infonce import KEY_VIEW, at_least_float32, moco_nll, push_keys
from raysl.losses.kernel import masked_info_nce
from raysl.losses.memory_bank import MemoryBank
from raysl.losses.mixing import cutmix, cutmix_box, kept_fraction, mixup

Base = Literal["infonce", "moco", "byol", "simsiam"]

_REQUIRES: dict[str, frozenset[str]] = {
    "infonce": frozenset({"z", "z_mix"}),
    "moco": frozenset({"z", "z_mix", "z_target"}),
    "byol": frozenset({"z", "z_mix", "p", "z_target"}),
    "simsiam": frozenset({"z", "z_mix", "p"}),
}


class BSIM(LossTerm):
    """λ·l(z_m, k_i) + (1 − λ)·l(z_m, k_j) for mixtures m of images i and j [recon].

    Shapes: V clean views, Vm mixed views (2 if symmetric else 1), B images on this rank,
    D projection dim, W ranks. The value is the mean over this rank's Vm·B mixtures.

    Args:
        base: the method the mixtures are keyed like. "infonce" (SimCLR: in-batch keys of the
            other view, gathered over ranks), "moco" (EMA keys and a queue of `queue_size`),
            "byol" (predictor, EMA-target keys), "simsiam" (predictor, stop-gradient keys).
        temperature: τ of the contrastive bases (unused by byol/simsiam).
        alpha: λ ~ Beta(α, α), one λ per batch; α = 1 is uniform (Un-Mix's default).
        mix_op: "mixup", "cutmix" (λ becomes the kept area fraction), or "random" (each batch
            one of the two with probability 1/2).
        pairing: the partner j of image i on the same rank: "reverse" (j = B − 1 − i, Un-Mix)
            or "random" (a random permutation).
        symmetric: mix both views (keys from the other view); False mixes view 0 only.
        queue_size: K, the queue of past EMA keys of base "moco" (must be > 0 there; unused
            by the other bases).
        dim: D, the projection width (filled by the run).
    """

    MUTABLE = frozenset({"temperature", "alpha"})
    min_views = 2  # its base loss and its mixtures' keys use another view of each image

    def __init__(
        self,
        base: Base = "infonce",
        temperature: Positive = 0.2,
        alpha: Positive = 1.0,
        mix_op: Literal["mixup", "cutmix", "random"] = "random",
        pairing: Literal["reverse", "random"] = "reverse",
        symmetric: bool = True,
        queue_size: NonNegativeInt = 0,
        dim: int = 128,
    ) -> None:
        super().__init__()
        if base not in _REQUIRES:
            raise ValueError(f"base must be one of {sorted(_REQUIRES)}, got {base!r}")
        if base == "moco" and queue_size <= 0:
            raise ConfigError(
                Problem("base 'moco' needs a queue: set it > 0 (e.g. 4096)", "loss.bsim.queue_size")
            )
        self.base, self.temperature, self.alpha = base, temperature, alpha
        self.mix_op, self.pairing, self.symmetric = mix_op, pairing, symmetric
        self.queue_size = queue_size
        self.requires = _REQUIRES[base]
        self.mixed_views = 2 if symmetric else 1
        self.queue = MemoryBank(queue_size, dim) if base == "moco" else None

    # ---- mixing (called by the loop before the forward pass) ----------------------------
    @torch.no_grad()
    def mix(self, views: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Mix each image of views (Vm, B, C, H, W) with a partner from the same batch.

        Every draw comes from `generator` (seeded alike on every rank): λ, the operator and
        the CutMix box from a NumPy generator seeded by it, then the permutation. All Vm views
        share λ, the partner and the box.

        Returns:
            mixed (Vm, B, C, H, W), lam (B,) the share of image i in mixture i, index (B,)
            the local row of its partner.
        """
        batch, height, width = views.shape[1], views.shape[-2], views.shape[-1]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        lam = float(rng.beta(self.alpha, self.alpha))
        op = self.mix_op
        if op == "random":
            op = "mixup" if rng.random() < 0.5 else "cutmix"
        if self.pairing == "reverse":
            index = torch.arange(batch - 1, -1, -1)
        else:
            index = torch.randperm(batch, generator=generator)
        index = index.to(views.device)
        partner = views[:, index]
        if op == "mixup":
            mixed = mixup(views, partner, lam)
        else:
            box = cutmix_box(height, width, lam, rng)
            mixed = cutmix(views, partner, box)
            lam = kept_fraction(box, height, width)
        dtype = views.dtype if views.is_floating_point() else torch.float32
        return mixed, torch.full((batch,), lam, dtype=dtype, device=views.device), index

    # ---- the loss -----------------------------------------------------------------------
    def forward(self, out: Outputs) -> Tensor:
        if out.z_mix is None or out.mix_lam is None or out.mix_index is None:
            raise ValueError("BSIM needs the mixture outputs (z_mix, mix_lam, mix_index)")
        views, mixed = out.z.shape[0], out.z_mix.shape[0]
        key_view = [(v + 1) % views for v in range(mixed)]  # mixture of view v -> keys of u
        lam, index = out.mix_lam, out.mix_index  # (B,), (B,)
        if self.base == "infonce":
            loss = self._infonce(out.z_mix, out.z, key_view, lam, index)
        elif self.base == "moco":
            loss = self._moco(out, key_view, lam, index)
        else:
            if out.p_mix is None:
                raise ValueError(f"base {self.base!r} needs predictor outputs ('p')")
            if self.base == "byol":
                if out.z_target is None:
                    raise ValueError("base 'byol' needs the EMA target ('z_target')")
                targets = out.z_target.detach()
            else:
                targets = out.z.detach()  # SimSiam's stop-gradient
            p = F.normalize(out.p_mix, dim=-1)  # (Vm, B, D)
            t = F.normalize(targets[key_view], dim=-1)  # (Vm, B, D)
            d_i = 2 - 2 * (p * t).sum(-1)  # (Vm, B) = ||n(p_m) - n(k_i)||^2
            d_j = 2 - 2 * (p * t[:, index]).sum(-1)  # (Vm, B)
            lam = lam.to(d_i.dtype)
            loss = (lam * d_i + (1 - lam) * d_j).mean()
        return loss

    def _infonce(
        self, z_mix: Tensor, z: Tensor, key_view: list[int], lam: Tensor, index: Tensor
    ) -> Tensor:
        mixed, batch = z_mix.shape[:2]
        q = F.normalize(z_mix, dim=-1)  # (Vm, B, D)
        keys = F.normalize(z, dim=-1).transpose(0, 1)  # (B, V, D)
        columns = distributed.gather_with_grad(keys.contiguous())  # (W*B, V, D)
        logits = torch.cat(
            [q[m] @ columns[:, u].T for m, u in enumerate(key_view)]
        )  # (Vm*B, M), M = W*B
        logits = at_least_float32(logits) / self.temperature
        offset = distributed.rank() * batch  # this rank's images are columns [offset, +B)
        rows = torch.arange(batch, device=z.device)
        weights = torch.zeros(batch, len(columns), dtype=logits.dtype, device=z.device)
        lam = lam.to(logits.dtype)
        weights.index_put_((rows, rows + offset), lam, accumulate=True)
        weights.index_put_((rows, index + offset), 1 - lam, accumulate=True)  # j may equal i
        weights = weights.repeat(mixed, 1)  # (Vm*B, M)
        valid = torch.ones_like(logits, dtype=torch.bool)
        # -Σ_c w_ic log softmax_c / Σ_c w_ic with Σ_c w_ic = λ + (1 − λ) = 1
        return masked_info_nce(logits, weights, valid)

    def _moco(self, out: Outputs, key_view: list[int], lam: Tensor, index: Tensor) -> Tensor:
        assert self.queue is not None and out.z_mix is not None
        if out.z_target is None:
            raise ValueError("base 'moco' needs the EMA target ('z_target')")
        q = F.normalize(out.z_mix, dim=-1)  # (Vm, B, D)
        k = F.normalize(out.z_target.detach(), dim=-1)  # (V, B, D)
        queue = self.queue.read()[0].clone()  # (K', D); a copy: push() writes in place
        losses = []
        for m, u in enumerate(key_view):
            nll = moco_nll(q[m], torch.stack([k[u], k[u, index]]), queue, self.temperature)
            weight = lam.to(nll.dtype)
            losses.append(weight * nll[0] + (1 - weight) * nll[1])  # (B,)
        loss = torch.stack(losses).mean()
        if self.training:
            push_keys(self.queue, k[KEY_VIEW], out)
        return loss

    def extra_repr(self) -> str:
        return (
            f"base={self.base!r}, temperature={self.temperature}, alpha={self.alpha}, "
            f"mix_op={self.mix_op!r}, pairing={self.pairing!r}, symmetric={self.symmetric}, "
            f"queue_size={self.queue_size}"
        )
