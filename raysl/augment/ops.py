"""Batched image ops with one parameter per sample.

Every op takes float images in [0, 1] of shape (N, C, H, W), C = 1 or 3, and per-sample
parameters of shape (N,), and matches the `torchvision.transforms.v2.functional` op of the
same name applied image by image, up to float rounding (`tests/augment/test_ops.py`). As in
torchvision, saturation, hue and grayscale leave 1-channel images unchanged. Nothing loops
over samples in Python.

The functional ops return new tensors; the `*_` variants write into a contiguous x and are
what `Augment` uses. Speed notes (CPU; they cost nothing on GPU): elementwise work runs on
flat (N, C, H*W) views, since a (N, 1, 1, 1) factor makes PyTorch's CPU kernels loop over
rows of W only; `where`, `remainder` and `masked_fill` are avoided (several times slower
than arithmetic on CPU); and large temporaries are avoided, since a fresh large allocation
costs page faults that can exceed the op itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma as torchvision writes it (`_rgb_to_grayscale_image`: 0.2989, not 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """t on `device`; a CPU -> CUDA copy goes through pinned memory and does not block, so
    the parameters of a batch never wait for the GPU's queue (no hidden sync)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _col(v: Tensor | float, x: Tensor) -> Tensor | float:
    """(N,) -> (N, 1, 1) on x's device and dtype, to broadcast over a flat (N, C, P) image."""
    if isinstance(v, Tensor):
        return to_device(v, x.device).to(x.dtype).view(-1, 1, 1)
    return v


def _flat(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, P), P = H*W; a view (the in-place ops need contiguous x)."""
    return x.view(x.shape[0], x.shape[1], -1)


# ---- geometry -------------------------------------------------------------------------


def crop_grid(
    boxes: Tensor, in_hw: tuple[int, int], size: int, flip: Tensor | None = None
) -> Tensor:
    """The `grid_sample` grid that resizes each box to size x size, optionally mirrored.

    boxes: (N, 4) top, left, height, width in pixels; flip: (N,) bool. Returns (N, S, S, 2).
    Output column u of a box of width w at `left` reads source column
    left + (u + 0.5) w / S - 0.5 (half-pixel centres, as `interpolate(align_corners=False)`)
    clamped to the box, so pixels outside the crop are never read: this is `resize(crop(x))`
    exactly. The map is affine per axis (an `affine_grid` theta with the clamp added), so it
    is built from two (N, S) vectors; a flip mirrors u.
    """
    H, W = in_hw
    b = boxes.to(torch.float32)
    top, left, h, w = b.unbind(1)  # (N,) each
    t = (torch.arange(size, device=b.device, dtype=torch.float32) + 0.5) / size  # (S,)
    tx = t.expand(len(b), size)
    if flip is not None:
        tx = torch.where(to_device(flip, b.device).view(-1, 1), 1.0 - t, t)  # (N, S)
    xs = (left[:, None] + tx * w[:, None] - 0.5).clamp_(
        min=left[:, None], max=(left + w - 1)[:, None]
    )
    ys = (top[:, None] + t * h[:, None] - 0.5).clamp_(min=top[:, None], max=(top + h - 1)[:, None])
    gx = xs.mul_(2.0 / W).add_(1.0 / W - 1.0)  # pixel -> [-1, 1], align_corners=False
    gy = ys.mul_(2.0 / H).add_(1.0 / H - 1.0)
    n = len(b)
    return torch.stack(
        (gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)), dim=-1
    )


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each image to its box, resize to size x size (bilinear), mirror where `flip`.

    x: (B, C, H, W) float; boxes: (B, 4) int top, left, height, width, or (V, B, 4) for V
    crops of every image; flip: (B,) or (V, B) bool. Returns (B, C, S, S) or
    (V, B, C, S, S), contiguous. Equals torchvision `resized_crop(..., antialias=False)`
    then `horizontal_flip`, up to float rounding; a box more than ~2x larger than the output
    aliases (no antialiasing). One `grid_sample` per view (V is small).
    """
    B, C, H, W = x.shape
    if boxes.dim() == 2:
        grid = crop_grid(to_device(boxes, x.device), (H, W), size, flip)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = torch.empty((boxes.shape[0], B, C, size, size), dtype=x.dtype, device=x.device)
    for v in range(boxes.shape[0]):
        out[v] = resized_crop(x, boxes[v], size, None if flip is None else flip[v])
    return out


# ---- colour ---------------------------------------------------------------------------


def gray(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> luma (N, 1, H, W), a new tensor; (N, 1, H, W) is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.reshape(x.shape[0], 3, -1).unbind(1)  # (N, P) each
    wr, wg, wb = GRAY_WEIGHTS
    return r.mul(wr).add_(g, alpha=wg).add_(b, alpha=wb).view(x.shape[0], 1, *x.shape[2:])


def _blend_(x: Tensor, target: Tensor | None, f: Tensor) -> Tensor:
    """x <- clamp(f x + (1 - f) target, 0, 1), torchvision's `_blend`; target (N, 1, ...) or
    None for 0 (consumed: overwritten). f: (N,)."""
    xf, fc = _flat(x), _col(f, x)
    if target is None:
        xf.mul_(fc)
    else:
        torch.addcmul(_flat(target).mul_(1.0 - fc), xf, fc, out=xf)
    xf.clamp_(0.0, 1.0)
    return x


def adjust_brightness_(x: Tensor, f: Tensor) -> Tensor:
    return _blend_(x, None, f)


def adjust_contrast_(x: Tensor, f: Tensor) -> Tensor:
    return _blend_(x, gray(x).mean(dim=(-2, -1), keepdim=True), f)


def adjust_saturation_(x: Tensor, f: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _blend_(x, gray(x), f)


def adjust_hue_(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by `shift` (N,) in [-0.5, 0.5] turns, in place.

    Exact HSV math without an HSV image: a hue rotation keeps each pixel's max and min, and
    channel n of the result is min + (max - min) g(6 h + n) for n = 5, 3, 1 (r, g, b), with
    h the rotated hue in turns and g the period-6 trapezoid clamp(|k - 2| - 1, 0, 1) on
    [0, 6) (the closed-form HSV -> RGB; Smith, 1978). h follows torchvision's `_rgb_to_hsv`
    (cases in the order r, g, b). The three channels are computed in x's own memory.
    """
    if x.shape[1] == 1:
        return x
    xf = _flat(x)
    r, g, b = xf.unbind(1)  # (N, P) each
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    delta = maxc - minc
    is_r = (r == maxc).to(x.dtype)
    is_g = (g == maxc).to(x.dtype).sub_(is_r).clamp_(min=0.0)  # g is max and r is not
    is_b = 1.0 - is_r - is_g
    # hue in sextants: (g - b)/d if r is max, (b - r)/d + 2 if g, (r - g)/d + 4 if b; 0 if d = 0
    h = (g - b).mul_(is_r).addcmul_(b - r, is_g).addcmul_(r - g, is_b).div_(delta.clamp(min=1e-30))
    h = h.add_(is_g, alpha=2.0).add_(is_b, alpha=4.0).mul_(1.0 / 6.0)  # in turns
    h = h.add_(_col(shift, x).view(-1, 1))
    # channel n: k/6 = h + (n - 2)/6 turns; with c = clamp(| |frac(k/6)| - 1/2 |, 1/6, 1/3),
    # g(k) = 2 - 6c, so the value is (min + 2 d) - 6 d c
    offsets = 0.5 - torch.arange(3, device=x.device, dtype=x.dtype).view(1, 3, 1) / 3
    torch.add(h.unsqueeze(1), offsets, out=xf)
    xf.frac_().abs_().sub_(0.5).abs_().clamp_(1.0 / 6.0, 1.0 / 3.0)
    base = minc.add_(delta, alpha=2.0)
    torch.addcmul(base.unsqueeze(1), delta.unsqueeze(1), xf, value=-6.0, out=xf)
    return x


def color_jitter_(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """ColorJitter with a random op order per sample (torchvision's `ColorJitter`), in place.

    factors: (N, 4) brightness, contrast, saturation, hue (identity: 1, 1, 1, 0);
    order: (N, 4), a permutation of 0..3 per row (0 brightness, 1 contrast, 2 saturation,
    3 hue): slot s applies op order[:, s]. Brightness, contrast and saturation are all
    clamp(f x + (1 - f) t) with target t = 0, the mean luma or the luma, so a slot is one
    blend over all rows with t = c_n mean + s_n luma, c_n, s_n in {0, 1} (bit-exact: the
    unused term adds exactly 0); hue then runs on the rows whose slot-s op is hue. `factors`
    and `order` are read on the CPU (no device sync when they live there).
    """
    rgb = x.shape[1] == 3
    factors, order = factors.cpu().float(), order.cpu()
    for s in range(4):
        op = order[:, s]  # (N,)
        if not rgb:  # saturation and hue are identities on one channel
            op = op.masked_fill(op == 2, 3)
        f = factors.gather(1, op.clamp(max=2)[:, None])[:, 0].masked_fill_(op == 3, 1.0)
        if (f != 1).any():
            con, sat = (op == 1).float(), (op == 2).float()  # (N,)
            target = None
            if con.any() or sat.any():
                luma = _flat(gray(x)) if rgb else _flat(x)  # (N, 1, P); x itself when C = 1
                mean = luma.mean(dim=-1, keepdim=True).mul_(_col(con, x))  # (N, 1, 1)
                target = luma.mul_(_col(sat, x)).add_(mean) if rgb else mean
            _blend_(x, target, f)
        hue = (op == 3) & (factors[:, 3] != 0)
        if rgb and hue.any():
            on_rows_(x, hue, lambda y, r: adjust_hue_(y, factors[r, 3]))
    return x


def on_rows_(x: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor | slice], Tensor]) -> Tensor:
    """x[rows] <- fn(x[rows], rows) for the rows where the CPU bool mask (N,) is set.

    fn gets the rows as a contiguous tensor it may change in place (x itself when every row
    is set) and the CPU row index, to pick the rows' parameters.
    """
    if mask.all():
        return fn(x, slice(None))
    rows = mask.nonzero().squeeze(1)
    rows_dev = to_device(rows, x.device)
    return x.index_copy_(0, rows_dev, fn(x.index_select(0, rows_dev), rows))


def grayscale_(x: Tensor) -> Tensor:
    """x <- luma in every channel, in place."""
    if x.shape[1] == 3:
        x.copy_(gray(x).expand_as(x))
    return x


def solarize_(x: Tensor, threshold: Tensor | float) -> Tensor:
    """Invert pixels >= threshold, in place; threshold: float or (N,) (> 1: unchanged)."""
    xf = _flat(x)
    inv = (xf >= _col(threshold, x)).to(x.dtype)
    torch.lerp(xf, 1.0 - xf, inv, out=xf)  # exact at weights 0 and 1
    return x


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """x * f, clamped to [0, 1]; f: (N,) >= 0."""
    return adjust_brightness_(x.clone(memory_format=torch.contiguous_format), f)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the image's mean luma; f: (N,) >= 0 (0 = flat grey)."""
    return adjust_contrast_(x.clone(memory_format=torch.contiguous_format), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the per-pixel luma; f: (N,) >= 0 (0 = grayscale)."""
    return adjust_saturation_(x.clone(memory_format=torch.contiguous_format), f)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue; shift: (N,) in [-0.5, 0.5] turns (see `adjust_hue_`)."""
    return adjust_hue_(x.clone(memory_format=torch.contiguous_format), shift)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Random-order ColorJitter (see `color_jitter_`)."""
    return color_jitter_(x.clone(memory_format=torch.contiguous_format), factors, order)


def to_grayscale(x: Tensor) -> Tensor:
    """Luma, kept 3-channel for RGB input: (N, C, H, W) -> (N, C, H, W)."""
    return grayscale_(x.clone(memory_format=torch.contiguous_format))


def solarize(x: Tensor, threshold: Tensor | float) -> Tensor:
    """Invert pixels >= threshold; threshold: float or (N,) (> 1 leaves a sample unchanged)."""
    return solarize_(x.clone(memory_format=torch.contiguous_format), threshold)


# ---- blur -----------------------------------------------------------------------------


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels (N, k) as torchvision's; sigma <= 0: the identity."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, kernel_size, dtype=torch.float32, device=sigma.device)
    s = sigma.to(torch.float32).clamp(min=1e-12)[:, None]
    w = torch.softmax((t / s).pow(2).neg(), dim=1)
    delta = torch.zeros_like(w)
    delta[:, kernel_size // 2] = 1.0
    return torch.where((sigma > 0)[:, None], w, delta)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with one σ per sample and reflect padding, as torchvision.

    x: (N, C, H, W); sigma: (N,) (<= 0: unchanged); kernel_size: odd, < 2 min(H, W).
    The 2-D kernel is the outer product of two 1-D kernels, applied as a (1, k) then a
    (k, 1) pass over all N*C planes at once: a grouped (depthwise) convolution, or for
    k <= 5 a few shifted multiply-adds, which are faster on CPU.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    n, c, h, w = x.shape
    p = kernel_size // 2
    k = gaussian_kernels(to_device(sigma, x.device), kernel_size).to(x.dtype)  # (N, k)
    k = k.repeat_interleave(c, dim=0)  # (N*C, k)
    xp = F.pad(x, (p, p, p, p), mode="reflect").view(n * c, h + 2 * p, w + 2 * p)
    if kernel_size <= 5:
        kc = k.t().reshape(kernel_size, n * c, 1, 1)
        xs = _shift_sum(xp, kc, dim=2, length=w)  # (N*C, H + 2p, W)
        out = _shift_sum(xs, kc, dim=1, length=h)  # (N*C, H, W)
    else:
        xs = F.conv2d(xp[None], k.view(n * c, 1, 1, kernel_size), groups=n * c)
        out = F.conv2d(xs, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    return out.view(n, c, h, w)


def _shift_sum(xp: Tensor, kc: Tensor, dim: int, length: int) -> Tensor:
    """sum_j kc[j] * xp.narrow(dim, j, length); xp: (P, ...), kc: (k, P, 1, 1)."""
    out = xp.narrow(dim, 0, length) * kc[0]
    for j in range(1, kc.shape[0]):
        out.addcmul_(xp.narrow(dim, j, length), kc[j])
    return out


def normalize_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """x <- (x - mean) / std per channel, in place; mean, std: (C,)."""
    _flat(x).sub_(mean.view(1, -1, 1)).div_(std.view(1, -1, 1))
    return x
