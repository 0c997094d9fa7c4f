"""2x2 max pooling (stride 2, `ceil_mode`) that is faster on the CPU and exact to PyTorch's.

PyTorch's CPU kernel for `max_pool2d` on NCHW tensors is not vectorised: in the ConvNet's
SimCLR step on Fashion-MNIST (batch 2 x 256, 28 x 28) its three pools took ~12 % of the step,
18.6 ms forward for the first alone (`benchmarks/RESULTS.md`, "The CPU step"). On CPU tensors
in NCHW layout `MaxPool2x2` instead:

- takes the maximum over the window's four corners, de-interleaved into contiguous tensors
  (a maximum is exact in any order): ~3 ms for those values, all that evaluation needs;
- when a gradient is needed, finds PyTorch's argmax, the *first* maximum in scan order (row
  by row), with a tournament of strict comparisons (a later corner wins only when greater),
  as PyTorch's flat indices into (H, W); the backward pass is PyTorch's own
  `max_pool2d_with_indices_backward` with them, so each window's gradient reaches the same
  single element (not shared among ties, as `amax` or `torch.maximum` would share it; ties
  are common: a uniform background gives equal activations);
- leaves a tensor holding a NaN (or both infinities) to PyTorch's kernel, which decides such
  windows its own way.

Values and gradients are therefore identical to `nn.MaxPool2d(2, ceil_mode=True)`, bit for bit
(`tests/models/test_pool.py`). Elsewhere (CUDA, channels-last tensors, `torch.compile` tracing)
it is `F.max_pool2d`, whose kernels there are already vectorised.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_ARGS = ([2, 2], [2, 2], [0, 0], [1, 1], True)  # kernel, stride, padding, dilation, ceil_mode


def _corners(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four positions of every 2x2 window, in PyTorch's scan order, each contiguous:
    (B, C, H, W) -> 4 x (B, C, ceil(H/2), ceil(W/2)); odd sides padded with -inf."""
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2), value=float("-inf"))
    return tuple(x[..., i::2, j::2].contiguous() for i in (0, 1) for j in (0, 1))  # type: ignore[return-value]


class _MaxPool2x2(torch.autograd.Function):
    """Values and PyTorch's flat indices from a tournament of the four corners; the backward
    pass is PyTorch's own (`max_pool2d_with_indices_backward`) with those indices."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        a, b, c, d = _corners(x)  # (B, C, h, w) each
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        out = torch.maximum(top, bottom)  # (B, C, h, w)
        if bool(out.sum().isnan()):  # a NaN (or +inf and -inf): PyTorch's kernel decides
            out, index = torch.ops.aten.max_pool2d_with_indices(x, *_ARGS)
        else:
            # the first maximum in scan order: a later corner wins only when strictly greater
            lower = bottom > top  # (B, C, h, w): the window's bottom row holds it
            left_right = b > a
            col = left_right ^ (lower & (left_right ^ (d > c)))  # lower ? d > c : b > a
            width = x.shape[-1]
            h, w = out.shape[-2:]
            small = torch.uint8 if width < 255 else torch.int32
            offset = lower.to(small) * width + col  # row * W + column within the window
            origin = 2 * width * torch.arange(h, device=x.device).view(h, 1)
            origin = origin + 2 * torch.arange(w, device=x.device)  # (h, w) top-left corners
            index = origin + offset  # (B, C, h, w) int64: PyTorch's flat index into (H, W)
        ctx.save_for_backward(x, index)
        return out

    @staticmethod
    @once_differentiable  # no gradient of the gradient (nothing in raysl asks for one)
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, index = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *_ARGS, index)


def max_pool_2x2(x: Tensor) -> Tensor:
    """`F.max_pool2d(x, 2, ceil_mode=True)` for (B, C, H, W) `x`; see the module docstring."""
    fast = (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous()
        and x.is_floating_point()
        and not torch.compiler.is_compiling()
    )
    if not fast:
        return F.max_pool2d(x, 2, ceil_mode=True)
    if not (torch.is_grad_enabled() and x.requires_grad):  # evaluation: the values alone
        a, b, c, d = _corners(x)
        return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    return _MaxPool2x2.apply(x)


class MaxPool2x2(nn.Module):
    """`nn.MaxPool2d(2, ceil_mode=True)`, fast on the CPU (`max_pool_2x2`)."""

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_2x2(x)
