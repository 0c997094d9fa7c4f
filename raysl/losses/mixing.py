"""Image mixing for mixture views: mixup (Zhang et al., 2018, arXiv:1710.09412) and CutMix
(Yun et al., 2019, arXiv:1905.04899), as szq0214/Un-Mix `UnMix_MoCo/for_ImageNet/
main_moco_unmix.py` applies them to a self-supervised batch.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

Box = tuple[
    int, int, int, int
]  # (top, bottom, left, right): rows [top, bottom), cols [left, right)


def mixup(x: Tensor, partner: Tensor, lam: float) -> Tensor:
    """λ·x + (1 − λ)·partner, pixel by pixel (any shape)."""
    return lam * x + (1 - lam) * partner


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> Box:
    """CutMix's box for target ratio λ: sides √(1−λ)·(H, W), a uniform centre, clipped.

    The `rand_bbox` of clovaai/CutMix-PyTorch `train.py`, which Un-Mix copies: integer sides
    int(H·√(1−λ)), half-extents side // 2 each way from the centre, clipped to the image. The
    area actually pasted can differ from 1 − λ (clipping, odd sides), so the caller sets λ to
    the kept fraction afterwards (`kept_fraction`), as both do.
    """
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return top, bottom, left, right


def kept_fraction(box: Box, height: int, width: int) -> float:
    """1 − box area / image area: the share of pixels that stay from the image itself."""
    top, bottom, left, right = box
    return 1.0 - (bottom - top) * (right - left) / (height * width)


def cutmix(x: Tensor, partner: Tensor, box: Box) -> Tensor:
    """x with the box (on the last two dims) replaced by the partner's pixels."""
    top, bottom, left, right = box
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed
