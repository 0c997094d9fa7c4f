"""InfoNCE against a naive loop over SimCLR's eq. (1), and its distributed gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysl.losses import InfoNCE, Outputs
from raysl.losses.kernel import masked_info_nce
from tests.conftest import run_distributed


def nt_xent_oracle(z: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. (1) with V views: mean over anchors and their positives of -log softmax."""
    views, batch, _ = z.shape
    flat = F.normalize(z.reshape(views * batch, -1), dim=1)
    n = len(flat)
    total, count = 0.0, 0
    for i in range(n):
        denom = sum(math.exp(float(flat[i] @ flat[k]) / temperature) for k in range(n) if k != i)
        positives = [j for j in range(n) if j != i and j % batch == i % batch]
        anchor = sum(
            -math.log(math.exp(float(flat[i] @ flat[j]) / temperature) / denom) for j in positives
        )
        total += anchor / len(positives)
        count += 1
    return total / count


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_infonce_matches_the_paper(views: int, temperature: float) -> None:
    torch.manual_seed(0)
    z = torch.randn(views, 6, 5, dtype=torch.float64)
    out = Outputs(z=z, sample_ids=torch.arange(6))
    assert InfoNCE(temperature)(out).item() == pytest.approx(
        nt_xent_oracle(z, temperature), rel=1e-10
    )


def test_infonce_is_invariant_to_batch_order() -> None:
    torch.manual_seed(1)
    z = torch.randn(2, 8, 4)
    perm = torch.randperm(8)
    loss = InfoNCE(0.2)(Outputs(z=z, sample_ids=torch.arange(8)))
    permuted = InfoNCE(0.2)(Outputs(z=z[:, perm], sample_ids=torch.arange(8)[perm]))
    assert loss.item() == pytest.approx(permuted.item(), rel=1e-6)


def test_infonce_falls_under_sgd_on_the_embeddings() -> None:
    torch.manual_seed(2)
    z = torch.randn(2, 16, 8, requires_grad=True)
    optimizer = torch.optim.SGD([z], lr=0.5)
    losses = []
    for _ in range(20):
        loss = InfoNCE(0.2)(Outputs(z=z, sample_ids=torch.arange(16)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_anchor_without_positive_gives_no_nan() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    valid = torch.ones(3, 4, dtype=torch.bool)
    positives = torch.zeros(3, 4, dtype=torch.bool)
    positives[0, 1] = True  # anchors 1 and 2 have none
    loss = masked_info_nce(logits, positives, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    no_positive = masked_info_nce(logits, torch.zeros_like(positives), valid)
    assert no_positive.item() == 0.0


# ---- distributed: W processes on a split batch == one process on the whole batch ----------
GLOBAL_BATCH, DIM_IN, DIM = 12, 6, 4


def _model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM_IN, 8), torch.nn.Tanh(), torch.nn.Linear(8, DIM)
    ).double()
    x = torch.randn(2, GLOBAL_BATCH, DIM_IN, dtype=torch.float64)  # (V, G, D_in)
    return model, x


def _infonce_step(model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    z = model(x)  # (V, b, D)
    return InfoNCE(0.3)(Outputs(z=z, sample_ids=ids))


def _distributed_infonce(rank: int, world: int) -> dict:
    model, x = _model_and_data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    b = GLOBAL_BATCH // world
    rows = slice(rank * b, (rank + 1) * b)
    loss = _infonce_step(ddp, x[:, rows], torch.arange(GLOBAL_BATCH)[rows])
    loss.backward()
    global_loss = loss.detach().clone()
    torch.distributed.all_reduce(global_loss)
    return {
        "loss": global_loss.item() / world,
        "grads": [p.grad.clone() for p in model.parameters()],
    }


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_infonce_equals_single_process(world: int) -> None:
    model, x = _model_and_data()
    loss = _infonce_step(model, x, torch.arange(GLOBAL_BATCH))
    loss.backward()
    expected = [p.grad for p in model.parameters()]
    for result in run_distributed(_distributed_infonce, world):
        assert result["loss"] == pytest.approx(loss.item(), abs=1e-10)
        for got, want in zip(result["grads"], expected):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_infonce_through_the_harness(world: int) -> None:
    from tests.losses.harness import assert_distributed_equivalent

    assert_distributed_equivalent(InfoNCE, {"temperature": 0.3}, world, views=3)
