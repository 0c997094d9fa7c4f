"""`raysl.models.pool`: the CPU fast path of 2x2 max pooling equals PyTorch's, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysl.models.backbones import convnet
from raysl.models.pool import MaxPool2x2, max_pool_2x2


def _forward_backward(pool, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = pool(x)
    out.backward(grad)
    return out.detach(), x.grad


def _reference(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, ceil_mode=True)


@pytest.mark.parametrize("shape", [(4, 3, 28, 28), (4, 5, 14, 14), (2, 6, 7, 7), (3, 2, 5, 8)])
def test_values_and_gradients_equal_pytorch_s_with_ties(shape):
    """Rounded ReLU outputs: most windows hold ties (zeros, equal values); each window's
    gradient must go to the same element as in PyTorch (the first maximum, row by row)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).relu().round(decimals=1)
    out_shape = (*shape[:2], -(-shape[2] // 2), -(-shape[3] // 2))
    grad = torch.randn(out_shape, generator=generator)
    ours, ours_grad = _forward_backward(max_pool_2x2, x, grad)
    want, want_grad = _forward_backward(_reference, x, grad)
    assert ours.shape == want.shape == out_shape
    assert torch.equal(ours, want) and torch.equal(ours_grad, want_grad)
    # ties really were broken: amax would have shared the gradient among them
    shared = x.detach().clone().requires_grad_()
    padded = F.pad(shared, (0, shape[3] % 2, 0, shape[2] % 2), value=float("-inf"))
    h, w = out_shape[2:]
    padded.unflatten(2, (h, 2)).unflatten(4, (w, 2)).amax((3, 5)).backward(grad)
    assert not torch.equal(shared.grad, want_grad)


@pytest.mark.parametrize("special", ["nan", "-inf", "inf"])
def test_non_finite_windows_follow_pytorch(special):
    x = torch.randn(2, 3, 6, 5)
    x[0, 0, 0, 1] = x[0, 1, 3, 3] = x[1, 2, 5, 4] = float(special)
    x[1, 0, 2:4, 2:4] = float(special)  # a whole window of it
    grad = torch.randn(2, 3, 3, 3)
    ours, ours_grad = _forward_backward(max_pool_2x2, x, grad)
    want, want_grad = _forward_backward(_reference, x, grad)
    assert torch.equal(ours.nan_to_num(), want.nan_to_num())
    assert torch.equal(ours.isnan(), want.isnan()) and torch.equal(ours_grad, want_grad)


def test_evaluation_and_other_layouts():
    x = torch.randn(3, 4, 9, 10).relu()
    with torch.no_grad():  # the values-only path (feature extraction)
        assert torch.equal(max_pool_2x2(x), _reference(x))
    last = x.contiguous(memory_format=torch.channels_last)  # PyTorch's own kernel
    assert torch.equal(max_pool_2x2(last), _reference(last))


def test_a_convnet_trains_identically_with_either_pool():
    """The ConvNet with `MaxPool2x2` and the same network with `nn.MaxPool2d(2, ceil_mode)`:
    the same loss and the same gradients after a step on Fashion-MNIST-sized inputs."""
    torch.manual_seed(0)
    ours = convnet(1, width=8)
    theirs = copy.deepcopy(ours)
    for stage in list(theirs.stages)[1:]:
        assert isinstance(stage[0], MaxPool2x2)
        stage[0] = nn.MaxPool2d(2, ceil_mode=True)
    x = torch.rand(16, 1, 28, 28).round(decimals=1)  # flat regions: ties after every layer
    grads = []
    for model in (ours, theirs):
        loss = model(x).square().sum()
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1], strict=True))
