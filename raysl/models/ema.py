"""The EMA target network of BYOL / MoCo / MSF (Grill et al., 2020, arXiv:2006.07733, eq. 1)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATarget(nn.Module):
    """A frozen copy of `online` updated as ξ <- τ ξ + (1 - τ) θ after every optimizer step.

    Buffers (batch-norm running statistics) are copied from the online network.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(online)
        self.net.requires_grad_(False)

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.net(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        target_params = list(self.net.parameters())
        online_params = [p.detach() for p in online.parameters()]
        torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
        for target_buffer, online_buffer in zip(self.net.buffers(), online.buffers()):
            target_buffer.copy_(online_buffer)
