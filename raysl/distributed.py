"""Collectives that fall back to single-process behaviour when no process group exists.

Every loss term and the loop call these instead of `torch.distributed` directly, so they run
in a CPU unit test, under `torchrun`, and inside a Ray Train worker alike.

Gradients: `gather_with_grad` and `all_reduce_with_grad` sum the incoming gradients over ranks
in their backward pass. With DDP averaging parameter gradients over W ranks, a per-rank loss
that is the mean over its own anchors then has exactly the gradient of the global mean over
all anchors, i.e. of one process on the concatenated batch (tests/test_distributed_equivalence.py).
Dropping that all-reduce gives gradients off by 1/W for cross-rank terms (lightly#1528).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@torch.no_grad()
def all_gather(x: Tensor) -> Tensor:
    """Concatenate `x` (same shape on every rank) over ranks along dim 0, in rank order."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_gather_uneven(x: Tensor) -> Tensor:
    """`all_gather` for tensors whose first dimension differs between ranks."""
    if not is_distributed():
        return x
    size = torch.tensor([len(x)], device=x.device)
    sizes = all_gather(size).tolist()
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: len(x)] = x
    parts = all_gather(padded).split(max(sizes))
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n = len(x)
        return all_gather(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        start = rank() * ctx.n
        return grad[start : start + ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """`all_gather` whose backward routes each rank's share of the gradient back to it.

    Args:
        x: (n, ...) on every rank, same n.

    Returns:
        (W*n, ...), rank r's rows at [r*n, (r+1)*n).
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum over ranks, differentiable: the gradient of every rank's output flows to every input."""
    if not is_distributed():
        return x
    return _AllReduceWithGrad.apply(x)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean over ranks of a detached tensor (for logging)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


@torch.no_grad()
def broadcast(x: Tensor, src: int = 0) -> Tensor:
    if is_distributed():
        dist.broadcast(x, src)
    return x


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def average_gradients(module: torch.nn.Module) -> None:
    """Average the gradients of `module`'s parameters over ranks (for parameters outside DDP,
    such as a loss term's own networks)."""
    if not is_distributed():
        return
    for param in module.parameters():
        if param.grad is not None:
            param.grad.copy_(all_reduce_mean(param.grad))
