"""Self-Contrastive learning, SelfCon (Bae et al., AAAI 2023, arXiv:2106.15499).

Official code: raymin0223/self-contrastive-learning: `losses/losses.py` (`ConLoss`),
`networks/resnet_big.py` (sub-network exits and their heads), `main_represent.py` (which
features and masks go into the loss). The model side is `raysl.models.exits`.

SelfCon is SupCon whose "views" of an image are its outputs: the projection of each
sub-network exit (G_1..G_E, branching off the backbone after an early stage) and of the
backbone (F), for each of the V augmentations. raysl stacks them into (E+1)·V views and feeds
the same kernel as SupCon; `ConLoss`'s `supcon_s` / `selfcon_s_FG` / `selfcon_m_FG` flags
become the view construction below.

Differences from the official code, all deliberate:
- `ConLoss`'s hidden factor τ / base_τ (base_τ = 0.07, so x1.43 at the scripts' τ = 0.1) is
  the optional `base_temperature` argument, off by default.
- Unsupervised with several augmentations (SelfCon-MU, `--multiview` without `--label`):
  the official code calls `ConLoss(features)` on a 2B-row batch, whose identity mask makes
  the *other augmentation* of the same image a negative; here the ids are dataset indices,
  so every output of the same image (other exits and other augmentations) is a positive, as
  in the official SelfCon-MU* (`selfcon_m_FG`) term and in SimCLR.
- Distributed: columns come from every rank (`gather_with_grad`); the official code runs
  on one process (or `DataParallel`, which also sees the whole batch).
- The projection heads are raysl's projector MLP (with batch norm) rather than the official
  Linear-ReLU-Linear; that is the model config's choice, not this term's.
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
    Outputs,
    Positive,
    PositiveInt,
    RunShape,
)
from raysl.losses.kernel import masked_info_nce
from raysl.losses.supcon import supcon_loss


def contrast_first_views(z: Tensor, ids: Tensor, temperature: float, anchor_views: int) -> Tensor:
    """`contrast_by_id` in which only the first `anchor_views` views are anchors.

    Columns are every view on every rank; an anchor's positives are the columns with its id
    other than itself. SelfCon's α term: anchors are the sub-network outputs, the contrast
    set is {sub-network outputs, backbone output} (`ConLoss(selfcon_s_FG / selfcon_m_FG)`).
    Every anchor must have a positive in its own image (true there: the backbone view), so
    the mean over this rank's anchors is already its share of the global mean.

    Args:
        z: (V', B, D) projections of V' views of this rank's B images.
        ids: (B,) labels or dataset indices; equal ids are positives.
        anchor_views: how many of the V' views (from the first) are anchors.
    """
    views, batch = z.shape[:2]
    columns = F.normalize(z.flatten(0, 1), dim=-1)  # (N, D), N = V'·B, view-major
    column_ids = ids.repeat(views)  # (N,)
    n_anchors = anchor_views * batch
    anchors, anchor_ids = columns[:n_anchors], column_ids[:n_anchors]  # (Na, D), (Na,)
    all_columns = distributed.gather_with_grad(columns)  # (M, D), M = W·N
    all_ids = distributed.all_gather(column_ids)  # (M,)

    logits = anchors @ all_columns.T / temperature  # (Na, M)
    offset = distributed.rank() * len(columns)  # this rank's columns sit at [offset, offset + N)
    own = torch.arange(n_anchors, device=z.device)
    valid = torch.ones_like(logits, dtype=torch.bool)
    valid[own, own + offset] = False  # an anchor is not its own negative
    positives = (anchor_ids[:, None] == all_ids[None, :]) & valid
    return masked_info_nce(logits, positives, valid)


class SelfCon(LossTerm):
    """SelfCon: supervised contrast between an image's sub-network and backbone outputs.

    The outputs of image b are G_e(x_v) for each exit e and augmentation v, and F(x_v). With
    `augment.views: 1` this is SelfCon-S (the paper's default: one view, no second
    augmentation); with V ≥ 2 it is SelfCon-M.

    alpha = 0 (SelfCon): SupCon over all (E+1)·V outputs as views. Anchor i's positives are the
    other outputs, on any rank, with i's label (`supervised`) or of i's image (SelfCon-SU);
    the denominator has every other output.

    alpha > 0 (SelfCon-S* / M*, the official `--alpha`): SupCon on the backbone outputs F
    alone (the V=1 SupCon-S term, whose anchors without a positive are skipped, so it is 0
    for SelfCon-SU*, which the official code leaves out; with V ≥ 2, SupCon on F's views) plus
    alpha x a term whose anchors are the sub-network outputs only and whose contrast set is
    {sub-network outputs, F}. Note the jump at 0: alpha = 0 is
    not the limit of alpha -> 0, as in the official code.

    Args:
        temperature: τ (0.1 in the official CIFAR and ImageNet scripts).
        exits: 1-based backbone stages after which a sub-network branches off; (2,) is
            the official default `selfcon_pos=[False, True, False]` (after layer2).
        exit_size: the sub-network: "fc" (pool + Linear to the backbone width; the
            official CIFAR choice), "small" (the remaining stages at half depth), "same"
            (unshared copies of the remaining stages; the official ImageNet choice).
        supervised: positives by label (SelfCon) or by image (SelfCon-SU, `--label` off).
        alpha: weight of the sub-network-anchored term in the S*/M* variant; 0 = SelfCon.
        base_temperature: if set, multiply the loss by τ / base_temperature as `ConLoss`
            does (base 0.07 there). None (default): no factor.
    """

    MUTABLE = frozenset({"temperature"})

    @classmethod
    def run_problems(
        cls, name: str, args: Mapping[str, Any], run: RunShape
    ) -> list[tuple[str, str]]:
        """Also: every exit follows a stage that has one after it (`raysl.models.exits`)."""
        found = super().run_problems(name, args, run)
        late = [stage for stage in args.get("exits", ()) if stage >= run.stages]
        if late:
            found.append((
                f"loss.{name}.exits",
                f"an exit must follow one of stages 1..{run.stages - 1} (the backbone has "
                f"{run.stages}; an exit after the last is the backbone itself), got "
                f"{list(args['exits'])}; e.g. exits: [2]",
            ))  # fmt: skip
        return found

    def __init__(
        self,
        temperature: Positive = 0.1,
        exits: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (2,),
        exit_size: Literal["fc", "small", "same"] = "fc",
        supervised: bool = True,
        alpha: NonNegative = 0.0,
        base_temperature: Positive | None = None,
    ) -> None:
        super().__init__()
        if not exits:
            raise ValueError("SelfCon needs at least one sub-network exit (exits=(2,) or more)")
        self.temperature = temperature
        self.exits = tuple(exits)
        self.exit_size = exit_size
        self.supervised = supervised
        self.alpha = alpha
        self.base_temperature = base_temperature
        self.requires = frozenset({"z", "z_sub", "labels"} if supervised else {"z", "z_sub"})

    def forward(self, out: Outputs) -> Tensor:
        exits, views = out.z_sub.shape[:2]  # z_sub: (E, V, B, D); z: (V, B, D)
        ids = out.labels if self.supervised else out.sample_ids  # (B,)
        # exits first, the backbone last: ((E+1)·V, B, D); the first E·V views are G's
        outputs = torch.cat([out.z_sub.flatten(0, 1), out.z])
        if self.alpha == 0:
            loss = supcon_loss(outputs, ids, self.temperature)
        else:
            backbone = supcon_loss(out.z, ids, self.temperature)
            sub = contrast_first_views(outputs, ids, self.temperature, exits * views)
            loss = backbone + self.alpha * sub
        if self.base_temperature is not None:
            loss = loss * (self.temperature / self.base_temperature)
        return loss
