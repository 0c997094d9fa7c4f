"""GlobalBatchNorm: W processes normalise (and differentiate) like one process on the whole batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysl.models.sync_bn import GlobalBatchNorm, convert_sync_batchnorm
from tests.conftest import run_distributed

BATCH = 12


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        nn.BatchNorm1d(6),
    ).double()


def _data() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(BATCH, 3, 5, 5, dtype=torch.float64)


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out.tanh() * torch.arange(6, dtype=out.dtype)).sum(1).mean()


def _distributed(rank: int, world: int) -> dict:
    net = convert_sync_batchnorm(_net(), torch.device("cpu"))
    assert any(isinstance(m, GlobalBatchNorm) for m in net.modules())
    ddp = nn.parallel.DistributedDataParallel(net)
    b = BATCH // world
    out = ddp(_data()[rank * b : (rank + 1) * b])
    _loss(out).backward()
    return {
        "out": out.detach(),
        "grads": [p.grad.clone() for p in net.parameters()],
        "running": [m.running_var.clone() for m in net.modules() if isinstance(m, GlobalBatchNorm)],
    }


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_global_batchnorm_equals_single_process(world: int) -> None:
    net = _net()
    out = net(_data())
    _loss(out).backward()
    results = run_distributed(_distributed, world)
    torch.testing.assert_close(
        torch.cat([r["out"] for r in results]), out.detach(), atol=1e-10, rtol=1e-8
    )
    bn_running = [
        m.running_var for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    for r in results:
        for got, want in zip(r["grads"], [p.grad for p in net.parameters()]):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)
        for got, want in zip(r["running"], bn_running):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_single_process_is_plain_batchnorm() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    converted = convert_sync_batchnorm(nn.Sequential(bn), torch.device("cpu"))[0]
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(converted(x), nn.BatchNorm2d(3)(x))
    assert isinstance(converted, GlobalBatchNorm)
