"""Optimizers: parameter groups without weight decay on biases and norms, LARS, lr scaling."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def scaled_lr(lr: float, global_batch: int, rule: str) -> float:
    """`lr` is given per 256 images: linear (Goyal et al., 2017) or square-root scaling."""
    if rule == "linear":
        return lr * global_batch / 256
    if rule == "sqrt":
        return lr * math.sqrt(global_batch / 256)
    return lr


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Biases and norm parameters (ndim <= 1) get no weight decay and no LARS adaptation."""
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise trust ratios (You et al., 2017, arXiv:1708.03888), as in SimCLR/BYOL.

    For groups with `lars=True` the update of each tensor is scaled by
    η·||w|| / (||g + λw||); groups with `lars=False` (biases, norms) are plain SGD.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust: float = 0.001,
    ):
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "weight_decay": weight_decay,
                "trust": trust,
                "lars": True,
            },
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update: Tensor = p.grad
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0), group["trust"] * w_norm / u_norm, 1.0
                    )
                    update = update * ratio
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = update.clone()
                else:
                    buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(cfg, modules: Iterable[nn.Module], global_batch: int) -> torch.optim.Optimizer:
    """Build the optimizer of `cfg` (an `OptimConfig`); the base lr is already batch-scaled."""
    lr = scaled_lr(cfg.lr, global_batch, cfg.lr_scaling)
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, trust=cfg.lars_trust)
    for group in groups:
        group.pop("lars")
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
