"""Evaluation of frozen features: weighted cosine kNN and a linear probe.

kNN follows Wu et al. (2018, arXiv:1805.01978, eq. 7): the k nearest bank features by cosine
similarity vote for their class with weight exp(s / T). raysl's default (k=200, T=0.1) is the
setting of `../shared/measured.md`'s raw-pixel anchors, which learned features must beat.

`eval.knn_k` may list several k (e.g. `[200, 20]`): the similarities and the top max(k)
neighbours are computed once and every k votes with the first k of them. Metric names
(`Evaluator.knn`): `<split>/knn_top1` is always the first k (what studies rank by); with a
list, every k is also reported as `<split>/knn_top1_k<k>`. (Not `@k`: MLflow refuses `@` in
metric names.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    transform: Callable[[Tensor], Tensor],
    batch_size: int,
    device: torch.device,
    autocast: bool = False,
) -> Tensor:
    """Pooled backbone features of every image, L2-normalised, on the CPU.

    Under torch.distributed each rank embeds a contiguous shard and the shards are gathered,
    so every rank returns the features of all `images` in order.

    Args:
        images: (N, C, H, W) uint8 on the CPU or on `device`.
        transform: uint8 images -> normalised float images (the deterministic eval view).

    Returns:
        (N, F) float32.
    """
    was_training = backbone.training
    backbone.eval()
    rank, world = distributed.rank(), distributed.world_size()
    per_rank = -(-len(images) // world)
    shard = images[rank * per_rank : (rank + 1) * per_rank]
    feats = []
    for start in range(0, len(shard), batch_size):
        x = transform(shard[start : start + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            h = backbone(x)
        feats.append(F.normalize(h.float(), dim=1))
    width = backbone.feature_dim  # an empty shard still takes part in the gather
    local = torch.cat(feats) if feats else torch.zeros(0, width, device=device)
    local = distributed.all_gather_uneven(local.contiguous())
    backbone.train(was_training)
    return local.cpu()


@torch.no_grad()
def knn_predict_ks(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    ks: Sequence[int],
    temperature: float = 0.1,
    chunk: int = 1024,
) -> Tensor:
    """Weighted cosine kNN class predictions for every k in `ks` from one similarity pass.

    Each chunk of queries is multiplied with the bank once and its top max(k) neighbours are
    taken once (sorted, most similar first); k votes with the first k of them.

    Args:
        bank: (N, F) L2-normalised features with labels `bank_labels` (N,).
        queries: (Q, F) L2-normalised features.
        ks: neighbour counts (each capped at N).

    Returns:
        (len(ks), Q) predicted labels.
    """
    ks = [min(k, len(bank)) for k in ks]
    preds = []
    for start in range(0, len(queries), chunk):
        sim = queries[start : start + chunk] @ bank.T  # (q, N)
        top_sim, top_idx = sim.topk(max(ks), dim=1)  # (q, K), K = max(ks)
        weights = (top_sim / temperature).exp()
        top_labels = bank_labels[top_idx]  # (q, K)
        per_k = []
        for k in ks:
            votes = torch.zeros(len(sim), num_classes, dtype=weights.dtype, device=weights.device)
            votes.scatter_add_(1, top_labels[:, :k], weights[:, :k])  # (q, C)
            per_k.append(votes.argmax(dim=1))
        preds.append(torch.stack(per_k))  # (len(ks), q)
    if not preds:
        return torch.zeros(len(ks), 0, dtype=torch.long)
    return torch.cat(preds, dim=1)


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> Tensor:
    """Weighted cosine kNN class predictions (Q,) at one k (see `knn_predict_ks`)."""
    return knn_predict_ks(bank, bank_labels, queries, num_classes, [k], temperature, chunk)[0]


def knn_top1_ks(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    ks: Sequence[int],
    temperature: float,
) -> dict[int, float]:
    """Top-1 accuracy (%) of `knn_predict_ks` per k; bank entries with label -1 are left out."""
    known = bank_labels >= 0
    preds = knn_predict_ks(bank[known], bank_labels[known], queries, num_classes, ks, temperature)
    hits = (preds == query_labels).float().mean(dim=1)  # (len(ks),)
    return {k: 100.0 * float(hit) for k, hit in zip(ks, hits)}


def knn_top1(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> float:
    """Top-1 accuracy (%) of `knn_predict` at one k; bank entries with label -1 are left out."""
    return knn_top1_ks(bank, bank_labels, queries, query_labels, num_classes, [k], temperature)[k]


def linear_probe(
    train: Tensor,
    train_labels: Tensor,
    tests: dict[str, tuple[Tensor, Tensor]],
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    seed: int = 0,
) -> dict[str, float]:
    """Train a linear classifier on frozen, standardised features; top-1 (%) on each test set.

    Full-batch Adam with a cosine lr on precomputed features: deterministic and cheap next to
    pretraining. Features are standardised with the training mean and std (as CMSF's
    CompRess-style probe does).
    """
    known = train_labels >= 0
    train, train_labels = train[known], train_labels[known]
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(train.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    x = (train - mean) / std
    for _ in range(epochs):
        loss = F.cross_entropy(head(x), train_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return {
            name: 100.0 * (head((feats - mean) / std).argmax(1) == labels).float().mean().item()
            for name, (feats, labels) in tests.items()
        }


class Evaluator:
    """The run's evaluation protocol over its splits: val kNN every epoch, test at the end.

    Monitoring (what a study may tune on): bank = labelled training images (of the
    `data.train_fraction` subset when it is below 1; at most `cfg.bank_limit`), queries = the
    val split. Final report (never tuned on): bank = train +
    val, queries = the test split; with `cfg.linear_probe`, probes trained on train (scored on
    val) and on train + val (scored on test).

    Each split is embedded once per state of the weights: the last epoch's val kNN, the test
    kNN and both probes share the train, val and test features (before, the final report
    embedded train and val twice and test twice). The memo is keyed on the version counters
    of the backbone's parameters and buffers, which every optimizer step and every
    `load_state_dict` advances, and `forget()` empties it (the loop calls it before each
    epoch, so no features are held while training).
    """

    def __init__(
        self,
        cfg,
        splits,
        transform: Callable[[Tensor], Tensor],
        device: torch.device,
        autocast: bool,
        seed: int,
    ) -> None:
        self.cfg, self.splits, self.transform = cfg, splits, transform
        self.device, self.autocast, self.seed = device, autocast, seed
        self._memo: dict[str, tuple[tuple[int, ...], Tensor]] = {}

    def features(self, backbone: nn.Module, images: Tensor) -> Tensor:
        return extract_features(
            backbone, images, self.transform, self.cfg.batch_size, self.device, self.autocast
        )

    def forget(self) -> None:
        """Drop the embedded splits (the weights are about to change)."""
        self._memo.clear()

    def embedded(
        self, backbone: nn.Module, split: str, labelled: bool = False, limit: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Features (N, F) and labels (N,) of split `split` ('train', 'val' or 'test'): all its
        images, or with `labelled` only those with a label (-1: none); the first `limit` of
        them. Computed once per state of `backbone`'s weights."""
        labels = getattr(self.splits, split).labels
        rows, name = None, split
        if labelled and not bool((labels >= 0).all()):
            rows, name = (labels >= 0).nonzero().squeeze(1)[:limit], f"{split}:labelled[:{limit}]"
        elif limit is not None and limit < len(labels):
            rows, name = torch.arange(limit), f"{split}[:{limit}]"
        state = (id(backbone), *(t._version for t in _tensors(backbone)))
        kept = self._memo.get(name)
        if kept is None or kept[0] != state:
            images = getattr(self.splits, split).images
            kept = (state, self.features(backbone, images if rows is None else images[rows]))
            self._memo[name] = kept
        return kept[1], (labels if rows is None else labels[rows])

    def _bank(self, backbone: nn.Module, include_val: bool) -> tuple[Tensor, Tensor]:
        if not include_val:  # the monitoring bank: at most `bank_limit` labelled images
            return self.embedded(backbone, "train", True, self.cfg.bank_limit or None)
        train, val = self.embedded(backbone, "train", True), self.embedded(backbone, "val", True)
        return torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])

    def knn(self, backbone: nn.Module, split: str, include_val: bool = False) -> dict[str, float]:
        """kNN top-1 (%) of split `split` ('val' or 'test') against the training bank (with
        `include_val`, train + val), by metric name: `<split>/knn_top1` at the first k of
        `eval.knn_k` and, when it is a list, `<split>/knn_top1_k<k>` at every k (one similarity
        pass for all of them)."""
        bank, labels = self._bank(backbone, include_val)
        ks = self.cfg.ks
        top1 = knn_top1_ks(
            bank, labels, *self.embedded(backbone, split),
            self.splits.num_classes, ks, self.cfg.knn_temperature,
        )  # fmt: skip
        out = {f"{split}/knn_top1": top1[ks[0]]}
        if isinstance(self.cfg.knn_k, list):
            out.update({f"{split}/knn_top1_k{k}": value for k, value in top1.items()})
        return out

    def final(self, backbone: nn.Module) -> dict[str, float]:
        """test/knn_top1 (and test/knn_top1_k<k>, see `knn`) if `cfg.test`, and the
        linear-probe metrics if `cfg.linear_probe`."""
        cfg, splits, out = self.cfg, self.splits, {}
        test = splits.test if cfg.test else None
        if test is not None:
            out.update(self.knn(backbone, "test", include_val=True))
        if cfg.linear_probe:
            train_f, val_f = self.embedded(backbone, "train")[0], self.embedded(backbone, "val")[0]
            probe = {
                "num_classes": splits.num_classes,
                "epochs": cfg.probe_epochs,
                "lr": cfg.probe_lr,
                "seed": self.seed,
            }
            val = {"val": (val_f, splits.val.labels)}
            out["val/linear_top1"] = linear_probe(train_f, splits.train.labels, val, **probe)["val"]
            if test is not None:
                both_f, both_y = (
                    torch.cat([train_f, val_f]),
                    torch.cat([splits.train.labels, splits.val.labels]),
                )
                scored = {"test": (self.embedded(backbone, "test")[0], test.labels)}
                out["test/linear_top1"] = linear_probe(both_f, both_y, scored, **probe)["test"]
        return out


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]
