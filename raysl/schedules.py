"""Per-step schedules as precomputed tensors (the DINO way: index by the global step)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def warmup_cosine(
    base: float,
    total_steps: int,
    warmup_steps: int = 0,
    final_ratio: float = 0.0,
    cosine: bool = True,
) -> Tensor:
    """Linear warm-up from 0 to `base`, then cosine decay to `base * final_ratio` (or constant).

    Returns:
        (total_steps,) float64 values; entry s is the value used at step s.
    """
    steps = torch.arange(total_steps, dtype=torch.float64)
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = ((steps - warmup_steps) / decay_steps).clamp(0, 1)
    if cosine:
        values = final_ratio * base + (1 - final_ratio) * base * 0.5 * (
            1 + torch.cos(math.pi * progress)
        )
    else:
        values = torch.full_like(steps, base)
    if warmup_steps:
        values = torch.where(steps < warmup_steps, base * (steps + 1) / warmup_steps, values)
    return values


def ema_momentum(base: float, total_steps: int, cosine: bool = True) -> Tensor:
    """EMA momentum τ_k = 1 - (1 - τ_base)(cos(πk/K) + 1)/2 (BYOL, Grill et al., 2020, §3.2)."""
    if not cosine:
        return torch.full((total_steps,), base, dtype=torch.float64)
    k = torch.arange(total_steps, dtype=torch.float64)
    return 1 - (1 - base) * (torch.cos(math.pi * k / max(total_steps, 1)) + 1) / 2
