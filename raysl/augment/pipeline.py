"""`Augment`: V random views of a uint8 batch, made on the training device in a few batched ops.

Random parameters are drawn apart from the pixels (`Augment.sample`, on the CPU from one
`torch.Generator`), so every rank can draw them for the whole global batch with a shared
seed and keep its own rows (`AugParams.select`): the augmentation of an image then does
not depend on the world size or the device. Applying them (`Augment.__call__`) runs each
op once over all V x B views, on the rows that need it (`ops.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.augment import ops
from raysl.augment.presets import ViewRecipe, view_recipes

if TYPE_CHECKING:
    from raysl.config import AugmentConfig

_MAX_TRIES = 10  # RandomResizedCrop.get_params
_NO_JITTER = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class AugParams:
    """Every random choice for n images x V views; dim 0 is the view, dim 1 the image.

    boxes: (V, n, 4) int64 crop top, left, height, width in input pixels.
    flip: (V, n) bool. jitter: (V, n, 4) float32 brightness, contrast, saturation, hue
    factors, (1, 1, 1, 0) where jitter is off. order: (V, n, 4) int64, slot s applies jitter
    op order[..., s] (0 brightness, 1 contrast, 2 saturation, 3 hue). gray: (V, n) bool.
    sigma: (V, n) float32 blur σ, 0 = no blur. solarize: (V, n) float32 threshold, inf = off.
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    order: Tensor
    gray: Tensor
    sigma: Tensor
    solarize: Tensor

    def _map(self, fn: Callable[[Tensor], Tensor]) -> AugParams:
        return AugParams(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def select(self, index: Tensor | slice) -> AugParams:
        """The rows of a subset of the images (index: long, bool or slice over dim 1)."""
        if isinstance(index, Tensor):
            index = index.to(self.flip.device)
        return self._map(lambda t: t[:, index])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AugParams:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.flip.shape[1]


def sample_boxes(n: int, hw: tuple[int, int], recipe: ViewRecipe, g: torch.Generator) -> Tensor:
    """(n, 4) crops distributed as torchvision's `RandomResizedCrop.get_params` (the
    Inception crop, Szegedy et al., 2015, arXiv:1409.4842), all tries drawn at once.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio), w = round(sqrt(A r)),
    h = round(sqrt(A / r)); the first of 10 tries that fits is kept, else the central crop of
    the closest allowed ratio; the corner is uniform over the positions that fit.
    """
    H, W = hw
    f64 = torch.float64
    area = torch.empty(n, _MAX_TRIES, dtype=f64).uniform_(
        *(recipe.scale or (1.0, 1.0)), generator=g
    )
    lo, hi = (math.log(r) for r in recipe.ratio)
    log_r = torch.empty(n, _MAX_TRIES, dtype=f64).uniform_(lo, hi, generator=g)
    corner = torch.rand(n, 2, dtype=f64, generator=g)
    if recipe.scale is None:
        return torch.tensor([0, 0, H, W]).expand(n, 4).clone()
    area = area * (H * W)
    w = (area * log_r.exp()).sqrt_().round_()  # (n, tries)
    h = (area / log_r.exp()).sqrt_().round_()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0].long(), h.gather(1, first)[:, 0].long()
    in_ratio = W / H  # fallback: central crop
    if in_ratio < min(recipe.ratio):
        fw, fh = W, round(W / min(recipe.ratio))
    elif in_ratio > max(recipe.ratio):
        fw, fh = round(H * max(recipe.ratio)), H
    else:
        fw, fh = W, H
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = (corner[:, 0] * (H - h + 1)).long().clamp_(max=H - h)
    left = (corner[:, 1] * (W - w + 1)).long().clamp_(max=W - w)
    top = torch.where(found, top, (H - fh) // 2)
    left = torch.where(found, left, (W - fw) // 2)
    return torch.stack((top, left, h, w), dim=1)


def sample_view(
    n: int, hw: tuple[int, int], recipe: ViewRecipe, g: torch.Generator
) -> dict[str, Tensor]:
    """One view's parameters for n images. Every draw is made whatever the recipe, so the
    stream (and thus e.g. the crops) does not shift when a probability changes."""
    boxes = sample_boxes(n, hw, recipe, g)
    flip = torch.rand(n, generator=g) < recipe.flip_prob
    m = torch.tensor(recipe.jitter, dtype=torch.float32)  # (4,)
    lo = torch.cat(((1 - m[:3]).clamp(min=0), -m[3:]))
    hi = torch.cat((1 + m[:3], m[3:]))
    jitter = lo + torch.rand(n, 4, generator=g) * (hi - lo)  # (n, 4)
    jitter_on = (torch.rand(n, generator=g) < recipe.jitter_prob) & bool(m.any())
    jitter = torch.where(jitter_on[:, None], jitter, torch.tensor(_NO_JITTER))
    order = torch.rand(n, 4, generator=g).argsort(dim=1)
    gray = torch.rand(n, generator=g) < recipe.grayscale_prob
    blur_on = torch.rand(n, generator=g) < recipe.blur_prob
    sigma = torch.empty(n).uniform_(*recipe.blur_sigma, generator=g)
    sigma = torch.where(blur_on, sigma, 0.0)
    solarize_on = torch.rand(n, generator=g) < recipe.solarize_prob
    solarize = torch.where(solarize_on, recipe.solarize_threshold, math.inf)
    return dict(
        boxes=boxes,
        flip=flip,
        jitter=jitter,
        order=order,
        gray=gray,
        sigma=sigma,
        solarize=solarize,
    )


class Augment:
    """V views per image from a preset (`presets.py`), batched over views and images.

    >>> aug = Augment(AugmentConfig(preset="simclr"), 3, 32, CIFAR_MEAN, CIFAR_STD)
    >>> views = aug(images, aug.sample(len(images), generator))  # (V, B, 3, 32, 32)
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)} and {len(std)}")
        self.recipes = view_recipes(cfg)
        self.views = cfg.views
        self.channels = channels
        self.image_size = image_size
        self.out_size = cfg.size or image_size
        # ~10% of the output side, odd, at least 3 (SimCLR appendix A: 23 px at 224)
        self.kernel_size = max(3, int(0.1 * self.out_size) // 2 * 2 + 1)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.identity = all(r.is_identity for r in self.recipes)

    def sample(self, n: int, generator: torch.Generator) -> AugParams:
        """All random parameters for n images x V views, drawn on the CPU from `generator`
        only (deterministic given the generator state, independent of device)."""
        hw = (self.image_size, self.image_size)
        per_view = [sample_view(n, hw, r, generator) for r in self.recipes]
        return AugParams(**{k: torch.stack([p[k] for p in per_view]) for k in per_view[0]})

    def __call__(self, images: Tensor, params: AugParams) -> Tensor:
        """images: (B, C, H, W) uint8 (or float in [0, 1]) on any device; params for exactly
        these B images (best kept on the CPU: then nothing here waits for the device).
        Returns (V, B, C, S, S) float32, normalised with mean/std."""
        B, C = images.shape[:2]
        V, S, N = self.views, self.out_size, self.views * B
        self._check(images, params)
        if self.identity:
            return self.plain(images).unsqueeze(0).repeat(V, 1, 1, 1, 1)
        dev = images.device
        p = params.to("cpu")  # masks and row indices are worked out here, without device syncs
        x = ops.resized_crop(self._to_float(images), p.boxes, S, p.flip).view(N, C, S, S)  # new
        jitter, order = p.jitter.reshape(N, 4), p.order.reshape(N, 4)
        jittered = (jitter != torch.tensor(_NO_JITTER)).any(1)
        gray, sigma, threshold = p.gray.reshape(N), p.sigma.reshape(N), p.solarize.reshape(N)
        if jittered.any():
            ops.on_rows_(x, jittered, lambda y, r: ops.color_jitter_(y, jitter[r], order[r]))
        if C == 3 and gray.any():
            ops.on_rows_(x, gray, lambda y, r: ops.grayscale_(y))
        if (sigma > 0).any():
            ops.on_rows_(
                x, sigma > 0, lambda y, r: ops.gaussian_blur(y, sigma[r], self.kernel_size)
            )
        if threshold.isfinite().any():
            ops.on_rows_(x, threshold.isfinite(), lambda y, r: ops.solarize_(y, threshold[r]))
        return ops.normalize_(x, *self._stats(dev)).view(V, B, C, S, S)

    def plain(self, images: Tensor) -> Tensor:
        """Deterministic eval view: (B, C, H, W) uint8 -> (B, C, S, S) float32, resized to S
        (bilinear, antialiased, as torchvision `Resize`) if needed, normalised."""
        x, S = self._to_float(images), self.out_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        elif x.data_ptr() == images.data_ptr():
            x = x.clone()
        return ops.normalize_(x, *self._stats(x.device))

    @staticmethod
    def _to_float(images: Tensor) -> Tensor:
        """uint8 -> float32 in [0, 1] (a new tensor); float input is passed through."""
        if images.is_floating_point():
            return images.to(torch.float32)
        return images.to(torch.float32).mul_(1 / 255)  # `images * (1/255)` is 20x slower on CPU

    def _stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        return ops.to_device(self.mean, device), ops.to_device(self.std, device)

    def _check(self, images: Tensor, params: AugParams) -> None:
        B, C, H, W = images.shape
        if self.channels != C or (self.image_size, self.image_size) != (H, W):
            raise ValueError(
                f"images are {C}x{H}x{W}, this Augment is for {self.channels}x{self.image_size}x{self.image_size}"
            )
        if len(params) != B or params.flip.shape[0] != self.views:
            raise ValueError(
                f"params are for {params.flip.shape[0]} views x {len(params)} images, need {self.views} x {B}"
            )
