"""InfoNCE with a queue (MoCo v2) against MoCo's logits with a naive loop, its queue and its
distributed equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysl.config import Config
from raysl.errors import ConfigError
from raysl.losses import InfoNCE, Outputs
from raysl.reporting import Recorder
from raysl.train import fit
from tests.conftest import TINY
from tests.losses.harness import assert_distributed_equivalent


def moco_oracle(z, z_target, queue, temperature: float, symmetric: bool = True) -> torch.Tensor:
    """MoCo: per query q (view v, image i) and positive k+ (view u != v, image i), the
    cross-entropy at label 0 of [q·k+, q·queue_0, ..., q·queue_{K-1}] / τ; mean over all.
    symmetric: every view is a query; otherwise only view 0 (MoCo v2's im_q), whose positives
    are the keys of the other views (V=2: im_k). A differentiable scalar in z's dtype."""
    views, batch, _ = z.shape

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(sum(x[d] ** 2 for d in range(len(x))))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sum(a[d] * b[d] for d in range(len(a)))

    total, count = z.new_zeros(()), 0
    for v in range(views) if symmetric else [0]:
        for i in range(batch):
            q = unit(z[v, i])
            for u in range(views):
                if u == v:
                    continue
                positive = dot(q, unit(z_target[u, i].detach())) / temperature
                negatives = [dot(q, unit(r)) / temperature for r in queue]
                denominator = torch.exp(positive) + sum(torch.exp(x) for x in negatives)
                total = total - torch.log(torch.exp(positive) / denominator)
                count += 1
    return total / count


def _outputs(views: int = 2, batch: int = 5, dim: int = 4, seed: int = 0, **kw) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    return Outputs(
        z=torch.randn(views, batch, dim, generator=g, dtype=torch.float64),
        z_target=torch.randn(views, batch, dim, generator=g, dtype=torch.float64),
        sample_ids=torch.arange(batch) + 100 * seed,
        labels=torch.arange(batch) % 3,
        **kw,
    )


def _filled(term: InfoNCE, rows: int, seed: int = 9) -> torch.Tensor:
    dim, dtype = term.queue.keys.shape[1], term.queue.keys.dtype
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(rows, dim, generator=g, dtype=dtype), dim=1)
    term.queue.push(keys)
    return keys


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_moco_matches_the_naive_loop(views: int, temperature: float, symmetric: bool) -> None:
    """Value and gradient, float64, 1e-9; symmetric=False with V=2 is MoCo v2 itself."""
    term = InfoNCE(temperature, queue_size=16, symmetric=symmetric, dim=4).double()
    queue = _filled(term, 11)
    out = _outputs(views)
    z = out.z.clone().requires_grad_()
    out.z = z
    got = term(out)
    (grad,) = torch.autograd.grad(got, z)
    want = moco_oracle(z, out.z_target, queue, temperature, symmetric)
    (want_grad,) = torch.autograd.grad(want, z)
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)
    if not symmetric:  # only view 1 (index 0) is a query
        assert not grad[1:].any()


def test_symmetric_is_the_mean_of_moco_v2_and_its_mirror() -> None:
    """With the same queue, symmetric (V=2) = (MoCo v2 on (x1, x2) + MoCo v2 on (x2, x1)) / 2."""
    symmetric = InfoNCE(0.2, queue_size=8, dim=4).double().eval()
    one_sided = InfoNCE(0.2, queue_size=8, symmetric=False, dim=4).double().eval()
    torch.testing.assert_close(_filled(symmetric, 8), _filled(one_sided, 8))
    out = _outputs(batch=6)
    mirror = Outputs(z=out.z.flip(0), z_target=out.z_target.flip(0), sample_ids=out.sample_ids)
    want = (one_sided(out) + one_sided(mirror)) / 2
    assert symmetric(out).item() == pytest.approx(want.item(), rel=1e-12)


def test_only_the_queue_gives_negatives() -> None:
    """MoCo v2: in-batch keys of other images are not negatives, so the batch loss is the
    mean of the losses of each image alone (with them as negatives it would be larger)."""
    term = InfoNCE(0.2, queue_size=8, dim=4).double().eval()  # eval: no enqueue between calls
    _filled(term, 8)
    out = _outputs(batch=6)
    per_image = [
        term(
            Outputs(
                z=out.z[:, i : i + 1],
                z_target=out.z_target[:, i : i + 1],
                sample_ids=out.sample_ids[i : i + 1],
            )
        ).item()
        for i in range(6)
    ]
    assert sum(per_image) / 6 == pytest.approx(term(out).item(), rel=1e-12)


def test_requires_and_state_follow_the_queue() -> None:
    simclr, moco = InfoNCE(0.2), InfoNCE(0.2, queue_size=32, dim=8)
    assert simclr.requires == {"z"} and dict(simclr.state_dict()) == {}
    state = {"queue.keys", "queue.labels", "queue.index", "queue.pushed"}
    for term in (moco, InfoNCE(0.2, queue_size=32, symmetric=False, dim=8)):
        assert term.requires == {"z", "z_target"} and set(term.state_dict()) == state
        assert term.queue.keys.shape == (32, 8)


def test_one_sided_without_a_queue_is_rejected_with_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^loss\.infonce\.symmetric: .*queue_size"):
        InfoNCE(0.2, symmetric=False)


@pytest.mark.parametrize("symmetric", [True, False])
def test_view_two_keys_are_enqueued_once_per_image_after_the_loss(symmetric: bool) -> None:
    term = InfoNCE(0.2, queue_size=64, symmetric=symmetric, dim=4).double()
    out = _outputs(views=2, batch=3)
    first = term(out)  # empty queue: no negatives yet
    assert first.item() == 0.0
    keys, labels, index = term.queue.read()
    want = F.normalize(out.z_target[1], dim=-1)  # MoCo's im_k: the second view's keys
    torch.testing.assert_close(keys, want)
    assert index.tolist() == [0, 1, 2] and labels.tolist() == [0, 1, 2]
    # the second step contrasts against the first step's keys
    out2 = _outputs(views=2, batch=3, seed=1)
    want_loss = moco_oracle(out2.z, out2.z_target, want, 0.2, symmetric)
    assert term(out2).item() == pytest.approx(want_loss.item(), rel=1e-10)
    assert len(term.queue) == 6
    term.eval()
    term(out2)
    assert len(term.queue) == 6, "evaluation does not enqueue"


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_queue_never_holds_an_image_twice_from_one_step(symmetric: bool) -> None:
    """K rows hold the last K images: each step adds one key per image (any V)."""
    term = InfoNCE(0.2, queue_size=12, symmetric=symmetric, dim=4).double()
    for step in range(4):
        term(_outputs(views=3, batch=4, seed=step))
    _, _, index = term.queue.read()
    assert len(term.queue) == 12 and int(term.queue.pushed) == 16
    assert len(set(index.tolist())) == 12  # the last 3 steps' 12 distinct images


def test_no_gradient_reaches_the_keys() -> None:
    term = InfoNCE(0.2, queue_size=8, dim=4)
    _filled(term, 8)
    z = torch.randn(2, 4, 4, requires_grad=True)
    zt = torch.randn(2, 4, 4, requires_grad=True)
    term(Outputs(z=z, z_target=zt, sample_ids=torch.arange(4))).backward()
    assert zt.grad is None and z.grad is not None


def test_queue_round_trips_through_the_state_dict() -> None:
    term = InfoNCE(0.2, queue_size=16, dim=4).double()
    for step in range(3):
        term(_outputs(seed=step))
    restored = InfoNCE(0.2, queue_size=16, dim=4).double()
    restored.load_state_dict(term.state_dict())
    out = _outputs(seed=7)
    assert restored(out).item() == term(out).item()


def test_moco_loss_falls_under_sgd() -> None:
    torch.manual_seed(3)
    term = InfoNCE(0.2, queue_size=32, dim=8)
    _filled(term, 32)
    term.eval()  # a fixed queue: the queries learn to separate from it
    z = torch.randn(2, 16, 8, requires_grad=True)
    target = z.detach().clone()
    optimizer = torch.optim.SGD([z], lr=2.0)
    losses = []
    for _ in range(20):
        loss = term(Outputs(z=z, z_target=target, sample_ids=torch.arange(16)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_and_bf16_inputs_stay_close_to_fp32() -> None:
    term = InfoNCE(0.2, queue_size=64, dim=16)
    _filled(term, 64)
    term.eval()
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 32, 16, generator=g, requires_grad=True)
    zt = torch.randn(2, 32, 16, generator=g)
    fp32 = term(Outputs(z=z, z_target=zt, sample_ids=torch.arange(32)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = term(Outputs(z=z, z_target=zt, sample_ids=torch.arange(32)))
    auto.backward()
    cast = term(
        Outputs(z=z.bfloat16().float(), z_target=zt.bfloat16().float(), sample_ids=torch.arange(32))
    )
    assert auto.dtype == torch.float32 and torch.isfinite(z.grad).all()
    assert auto.item() == pytest.approx(fp32.item(), rel=2e-2)
    assert cast.item() == pytest.approx(fp32.item(), rel=2e-2)


def test_one_view_is_rejected() -> None:
    with pytest.raises(ValueError, match="2 views"):
        InfoNCE(0.2, queue_size=4, dim=4)(_outputs(views=1))


# ---- distributed: W processes == one process on the concatenated batch, queue included --------
@pytest.mark.dist
@pytest.mark.parametrize(
    ("world", "size", "queue", "symmetric"),
    [
        (2, 12, 40, True),
        (3, 12, 7, True),
        (2, 2, 5, True),
        (3, 3, 5, True),
        (2, 12, 30, False),  # MoCo v2: one query view, B keys a step
        (3, 3, 2, False),
    ],
)
def test_moco_distributed_equals_single_process(
    world: int, size: int, queue: int, symmetric: bool
) -> None:
    """Queues larger and smaller than a step's keys, and per-rank batches of 1; the harness
    also compares the queues (the term's state dict) of every rank."""
    kwargs = {"temperature": 0.3, "queue_size": queue, "symmetric": symmetric, "dim": 4}
    assert_distributed_equivalent(InfoNCE, kwargs, world, steps=3, size=size)


def test_moco_trains_end_to_end() -> None:
    cfg = Config().override(
        {**TINY, "epochs": 1, "loss.infonce.queue_size": 256, "loss.infonce.temperature": 0.2}
    )
    recorder = Recorder()
    summary = fit(cfg, recorder)
    assert "train/loss/infonce" in summary and math.isfinite(summary["train/loss/infonce"])
    assert summary["train/loss/infonce"] > 0
