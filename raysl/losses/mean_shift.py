"""Mean shift onto nearest target neighbours: BYOL (k=1), MSF and constrained MSF (CMSF).

MSF: Koohpayegani, Tejankar and Pirsiavash, "Mean Shift for Self-Supervised Learning", ICCV
2021, arXiv:2105.07269; official code UMBCvision/MSF `train_msf.py`.
CMSF: Navaneet, Koohpayegani, Tejankar, Pourahmadi, Subramanya and Pirsiavash, "Constrained
Mean Shift Using Distant Yet Related Neighbors for Representation Learning", ECCV 2022,
arXiv:2112.04607; official code UCDvision/CMSF `self_supervised/train_cmsf_self.py` (2q),
`supervised/train_cmsf_sup.py` (label), `semi_supervised/pseudo_cmsf.py` (pseudo_label).
The loss is [code] throughout (methods.md §3.1-3.3); nothing here is reconstructed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed
from raysl.losses.base import (
    LossTerm,
    NonNegativeInt,
    Outputs,
    PositiveInt,
    Probability,
    RunShape,
)
from raysl.losses.memory_bank import MemoryBank
from raysl.losses.neighbours import DEMOTE, k_nearest, member_mask

Constraint = Literal["none", "2q", "label", "pseudo_label"]


class MeanShift(LossTerm):
    """Pull each online prediction towards the k nearest neighbours of the other view's target.

    For query u = n(p) and target v = n(z_target) of the other view, the targets of the whole
    global batch are pushed into a bank M of EMA-target embeddings first, so v is its own
    nearest neighbour; then with d(a, m) = 2 - 2 a·m the per-anchor loss is

        L_u = mean_{m in NN_k(v)} d(u, m)                       (MSF)
        L   = beta * L_c + (1 - beta) * L_u                     (CMSF: beta = 0.5 in the code)

    where L_c uses the k nearest neighbours of v among the bank entries allowed by the
    constraint, ranked first (the others follow, each demoted by 5 > max d):

        "none"          MSF; beta is ignored. k=1 is BYOL's 2 - 2 cos (= `Similarity` with
                        an EMA target): the only neighbour is v itself, whatever else the
                        bank holds, for every constraint.
        "2q"            CMSF-2Q: a pool (2, N, D) keeps the two most recent targets of every
                        image (view 0's); the allowed entries are those of the k' images
                        nearest to the anchor's image when each image is represented by its
                        *older* embedding (the previous epoch's). The pool costs 2 N D floats:
                        51 MB for N = 50,000, D = 128 in fp32.
        "label"         supervised CMSF: entries with the anchor's label.
        "pseudo_label"  semi-supervised CMSF: labels from an MLP (D -> hidden -> classes) on the
                        target embedding, ground truth on the labelled subset; anchors below
                        `conf_threshold` are unconstrained.

    Anchors (this rank's) are the query rows; the value is their mean, and every rank's bank,
    pool and pseudo-labeller is the same as one process on the global batch would hold. The
    only gradient path is through p (neighbours are detached), so nothing crosses ranks.

    Which setting reproduces which code: constraint "none" = MSF (UMBCvision/MSF, k=1 BYOL);
    "2q" with beta 0.5 = CMSF-2Q (`train_cmsf_self.py`); "label" with beta 1 = supervised
    CMSF (`train_cmsf_sup.py`); "pseudo_label" with beta 1 = semi-supervised CMSF
    (`pseudo_cmsf.py`, up to the pseudo-labeller's training, below). symmetric=False, k, k'
    as in `run_selfsup.sh` (k 5, k' 5). Values, gradients, bank and chosen neighbours agree
    once no random initial row is left in play (below).

    Differences from the official code:
        - the bank starts empty instead of random unit vectors (`MemoryBank`), and a bank
          smaller than one step's targets searches those targets instead of asserting;
        - 2q, first epoch: the pool starts empty, not with `randn` vectors. An anchor whose
          image has fewer than two stored targets is unconstrained, and images without an
          older embedding are never in the constraint set. The official code searches its
          initial random pool there: unnormalised Gaussian vectors (norm ~ sqrt(D), e.g. ~5.6
          at D = 32), so 2 - 2 v'·m' is dominated by the random vectors' norms and the first
          epoch's constraint sets are noise, not neighbours under another augmentation. raysl
          keeps this departure because it removes that artefact. The two agree once every
          anchor and every bank row's image has two stored targets: K/B steps into the
          second epoch;
        - 2q: the constraint set is the k' nearest *images*, not bank rows. Rows of one image
          share its older embedding, so they are exact ties, and the code's choice among them
          follows `topk`'s tie order (one row of an image may be in the set and the other
          not, and one image may take two of the k' places). Kept: it makes the set
          independent of tie order and of where a row sits in the bank. Identical whenever
          each image is in the bank at most once (symmetric=False and a bank no longer than
          an epoch, the official setting);
        - label/pseudo_label: rows of another class get d + 5 instead of exactly 5.0. Kept:
          when fewer than k rows share the anchor's label, the code's fill-up is an arbitrary
          pick among exact ties at 5.0 (at the start, its random initial rows with label -1);
          here the nearest other rows fill up. Identical whenever k rows share the label.
          The official supervised and semi-supervised scripts use only L_c: beta=1;
        - pseudo_label: the MLP has no batch norm (per-rank batch statistics would make ranks
          disagree) and is trained online, every step, with cross-entropy on the labelled
          target rows instead of being retrained from scratch on cached features twice an
          epoch. Its cross-entropy adds gradient to the MLP only, not to the value returned
          (it is added as `ce - ce.detach()`), and is scaled by this term's weight;
        - symmetric=True (not in the official code) averages both directions like BYOL;
        - no ShuffleBN: the model's (sync) batch norm stands in for it.

    Args:
        k: neighbours in the loss (`--topk`: 5 self-supervised, 10 (semi-)supervised).
        bank_size: K, entries in the bank (128,000 on ImageNet). 0: search the batch only.
        constraint: see above.
        k_prime: k', the constraint-set size for 2q (`--topkp`; 5 in `run_selfsup.sh`).
        beta: weight of the constrained term; 0 is MSF, 1 the constrained term alone.
        symmetric: False (the code): query = view 1, target = view 0 (with the
            `weak_strong` preset view 0 is weak and view 1 strong; more views: views 1..V-1
            all query view 0). True: query view v and target view v+1 mod V, every v.
        chunk: bank columns per block of the top-k search (memory O(B x chunk)).
        conf_threshold: pseudo_label: minimum softmax probability to be constrained (0.85).
        label_fraction: pseudo_label: fraction of the training images whose labels are used,
            a fixed random subset of dataset indices (seed 0), the same on every rank.
        pseudo_hidden_dim: pseudo_label: hidden width of the MLP; None: 2 x dim as the code.
        dim, num_samples, num_classes: from the run (embedding size, training images, classes).
    """

    MUTABLE = frozenset({"conf_threshold"})
    min_views = 2  # queries of one view regress onto the neighbours of another's target

    @classmethod
    def run_problems(
        cls, name: str, args: Mapping[str, Any], run: RunShape
    ) -> list[tuple[str, str]]:
        """Also: `k` no larger than the search set. `_search_set` searches the bank, or this
        step's targets (P x the global batch, P = V views with `symmetric`, else 1) when the
        bank is smaller, so at most max(bank_size, P x batch) rows; a larger k is silently k'."""
        found = super().run_problems(name, args, run)
        targets = (run.views if args.get("symmetric") else 1) * run.batch_size
        rows = max(int(args.get("bank_size", 0)), targets)
        if int(args.get("k", 1)) > rows:
            found.append((
                f"loss.{name}.k",
                f"{args['k']} neighbours, but the search set holds at most {rows} rows "
                f"(bank_size {args.get('bank_size', 0)}, or this step's {targets} targets when "
                f"the bank is smaller); set k <= {rows}, or raise loss.{name}.bank_size",
            ))  # fmt: skip
        return found

    def __init__(
        self,
        k: PositiveInt = 5,
        bank_size: NonNegativeInt = 8192,
        constraint: Constraint = "none",
        k_prime: PositiveInt = 5,
        beta: Probability = 0.5,
        symmetric: bool = False,
        chunk: PositiveInt = 4096,
        conf_threshold: Probability = 0.85,
        label_fraction: Probability = 0.1,
        pseudo_hidden_dim: PositiveInt | None = None,
        dim: int = 128,
        num_samples: int = 0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.k, self.k_prime, self.chunk = k, k_prime, chunk
        self.constraint, self.symmetric = constraint, symmetric
        self.beta = beta if constraint != "none" else 0.0
        self.conf_threshold = conf_threshold
        self.requires = frozenset({"p", "z_target"})
        if constraint in ("label", "pseudo_label"):
            self.requires |= {"labels"}
        self.bank = MemoryBank(bank_size, dim)
        if constraint in ("2q", "pseudo_label") and num_samples <= 0:
            raise ValueError(f"constraint '{constraint}' needs num_samples (the dataset size)")
        if constraint == "2q":
            self.register_buffer("pool", torch.zeros(2, num_samples, dim))  # (2, N, D)
            # targets written per image; the slot written next (the older one) is writes % 2
            self.register_buffer("pool_writes", torch.zeros(num_samples, dtype=torch.long))
        if constraint == "pseudo_label":
            if num_classes < 2:
                raise ValueError("constraint 'pseudo_label' needs num_classes >= 2")
            labelled = torch.zeros(num_samples, dtype=torch.bool)  # (N,)
            order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(0))
            labelled[order[: round(label_fraction * num_samples)]] = True
            self.register_buffer("labelled", labelled)
            hidden = pseudo_hidden_dim or 2 * dim
            with torch.random.fork_rng(devices=[]):  # same weights on every rank
                torch.manual_seed(0)
                self.pseudo_labeler = nn.Sequential(
                    nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
                )

    def forward(self, out: Outputs) -> Tensor:
        if self.training:
            return self._forward(out)
        saved = [b.clone() for b in self.buffers()]  # the loss of a step, the state unchanged
        try:
            return self._forward(out)
        finally:
            with torch.no_grad():
                for buffer, value in zip(self.buffers(), saved):
                    buffer.copy_(value)

    def _forward(self, out: Outputs) -> Tensor:
        if out.p is None or out.z_target is None:
            raise ValueError("mean_shift needs the outputs 'p' and 'z_target'")
        if "labels" in self.requires and out.labels is None:
            raise ValueError(f"mean_shift with constraint '{self.constraint}' needs labels")
        with torch.autocast(out.p.device.type, enabled=False):  # distances in >= fp32
            dtype = torch.promote_types(out.p.dtype, torch.float32)
            p = F.normalize(out.p.to(dtype), dim=-1)  # (V, B, D) online predictions
            t = F.normalize(out.z_target.detach().to(dtype), dim=-1)  # (V, B, D) EMA targets
            views, ids = len(p), out.sample_ids
            if views < 2:
                raise ValueError("mean_shift needs at least 2 views")
            pairs = (
                [(v, (v + 1) % views) for v in range(views)]
                if self.symmetric
                else [(v, 0) for v in range(1, views)]
            )  # (query view, target view)
            pushed = sorted({target for _, target in pairs})
            labels = out.labels if out.labels is not None else torch.full_like(ids, -1)
            row_labels = {v: labels for v in pushed}  # (B,) label stored with each target
            extra = p.new_zeros(())
            if self.constraint == "pseudo_label":
                row_labels, extra = self._pseudo_labels(t, pushed, ids, labels)

            # update the state with every rank's targets *before* the search (as the code does)
            if self.constraint == "2q":
                self._write_pool(ids, t[0])
            for v in pushed:
                self.bank.push(t[v], row_labels[v], ids)
            keys, key_labels, key_ids = self._search_set(t, pushed, row_labels, ids)
            keys = keys.to(dtype)  # (K', D)

            queries = torch.cat([p[q] for q, _ in pairs])  # (A, D), A = len(pairs) * B
            targets = torch.cat([t[v] for _, v in pairs])  # (A, D)
            anchor_labels = torch.cat([row_labels[v] for _, v in pairs])  # (A,)
            anchor_ids = ids.repeat(len(pairs))  # (A,)

            def regress(index: Tensor) -> Tensor:  # (A, k) neighbours -> (A,) mean distance
                return (2 - 2 * torch.einsum("ad,akd->ak", queries, keys[index])).mean(dim=1)

            per_anchor = queries.new_zeros(len(queries))
            if self.beta < 1:
                _, unconstrained = k_nearest(targets, keys, self.k, self.chunk)
                per_anchor = per_anchor + (1 - self.beta) * regress(unconstrained)
            if self.beta > 0:
                demote = self._demotion(targets, anchor_ids, anchor_labels, key_labels, key_ids)
                _, constrained = k_nearest(targets, keys, self.k, self.chunk, demote)
                per_anchor = per_anchor + self.beta * regress(constrained)
            return per_anchor.mean() + extra

    def _search_set(
        self, t: Tensor, pushed: list[int], row_labels: dict[int, Tensor], ids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(keys (K', D), labels (K',), dataset indices (K',)) to search: the bank, which
        holds this step's targets, or, if it cannot hold them all, this step's targets."""
        if self.bank.size >= len(pushed) * len(ids) * distributed.world_size():
            return self.bank.read()
        return (
            torch.cat([distributed.all_gather(t[v]) for v in pushed]),
            torch.cat([distributed.all_gather(row_labels[v]) for v in pushed]),
            distributed.all_gather(ids).repeat(len(pushed)),
        )

    def _demotion(
        self,
        targets: Tensor,
        anchor_ids: Tensor,
        anchor_labels: Tensor,
        key_labels: Tensor,
        key_ids: Tensor,
    ) -> Callable[[int, int], Tensor]:
        """`(start, stop) -> (A, stop - start)`: DEMOTE on the bank columns outside each
        anchor's constraint set, 0 inside it and for unconstrained anchors."""
        if self.constraint == "2q":
            slot = self.pool_writes % 2  # (N,) after this step's write: the older target
            older = self.pool[slot[anchor_ids], anchor_ids].to(targets.dtype)  # (A, D)
            constrained = self.pool_writes[anchor_ids] >= 2  # (A,) the image has an older one
            # images, not bank entries: entries of one image share its older embedding
            images, image_of = torch.unique(key_ids, return_inverse=True)  # (U,), (K',)
            image_older = self.pool[slot[images], images].to(targets.dtype)  # (U, D)
            excluded = torch.where(self.pool_writes[images] >= 2, 0.0, float("inf"))
            excluded = excluded.to(targets.dtype)[None, :]  # (1, U) no older embedding yet
            distance, members = k_nearest(  # (A, k') nearest images in the older space
                older, image_older, self.k_prime, self.chunk, lambda a, b: excluded[:, a:b]
            )
            members = members.masked_fill(~torch.isfinite(distance), -1)

            def allowed(start: int, stop: int) -> Tensor:
                return member_mask(members, image_of[start:stop])

        else:  # label, pseudo_label: entries with the anchor's (pseudo-)label
            constrained = anchor_labels >= 0  # unknown / not confident: unconstrained

            def allowed(start: int, stop: int) -> Tensor:
                return key_labels[None, start:stop] == anchor_labels[:, None]

        def demote(start: int, stop: int) -> Tensor:
            keep = allowed(start, stop) | ~constrained[:, None]  # (A, c)
            return torch.where(keep, 0.0, DEMOTE).to(targets.dtype)

        return demote

    @torch.no_grad()
    def _write_pool(self, ids: Tensor, targets: Tensor) -> None:
        """Store every rank's targets (B, D) as the newest of their images' two."""
        ids, targets = distributed.all_gather(ids), distributed.all_gather(targets)
        self.pool[self.pool_writes[ids] % 2, ids] = targets.to(self.pool.dtype)
        self.pool_writes[ids] += 1  # ids are unique within a global batch

    def _pseudo_labels(
        self, t: Tensor, pushed: list[int], ids: Tensor, labels: Tensor
    ) -> tuple[dict[int, Tensor], Tensor]:
        """Labels of the pushed target rows: ground truth on the labelled subset, else the
        MLP's argmax if its probability reaches `conf_threshold`, else -1 (unconstrained).
        Also the cross-entropy on the labelled rows as `ce - ce.detach()` (gradient only)."""
        mlp = self.pseudo_labeler
        rows = torch.cat([t[v] for v in pushed])  # (P*B, D)
        truth = labels.repeat(len(pushed))  # (P*B,)
        known = self.labelled[ids].repeat(len(pushed)) & (truth >= 0)
        logits = mlp(rows.to(mlp[0].weight.dtype)).to(rows.dtype)  # (P*B, C)
        confidence, guess = logits.detach().softmax(dim=1).max(dim=1)
        guess = torch.where(confidence >= self.conf_threshold, guess, -1)
        rows_labels = torch.where(known, truth, guess)
        # mean over every rank's labelled rows: sum here x W / global count, then the loop
        # averages the MLP's gradients over ranks
        count = distributed.all_gather(known.sum().view(1)).sum().clamp(min=1)
        ce = F.cross_entropy(logits, truth.clamp(min=0), reduction="none")  # (P*B,)
        ce = (ce * known).sum() * distributed.world_size() / count
        return dict(zip(pushed, rows_labels.split(len(ids)))), ce - ce.detach()
