"""Each batched op against torchvision v2 applied image by image with the same parameters.

Tolerances: brightness, contrast, saturation, grayscale, blur and solarize differ from
torchvision only in the order of float32 roundings (observed <= 4e-7), checked at 1e-6.
Hue takes a different exact route (closed-form HSV -> RGB instead of HSV + gather; observed
~1.2e-6) and the crop samples through `grid_sample`, whose coordinate un-normalisation
rounds differently from `interpolate` (observed ~3e-6): both are checked at 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from raysl.augment import ops

N = 24


def _images(
    c: int, h: int = 12, w: int = 14, quantised: bool = False, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if quantised:  # uint8 levels: many ties between channels, grey pixels, exact 0 and 1
        return torch.randint(0, 256, (N, c, h, w), generator=g).float().div_(255)
    return torch.rand(N, c, h, w, generator=g)


def _per_sample(fn, x: torch.Tensor, values: torch.Tensor, **kw) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.stack([fn(x[i], float(values[i]), **kw) for i in range(len(x))])


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ops.adjust_brightness, TF.adjust_brightness),
        (ops.adjust_contrast, TF.adjust_contrast),
        (ops.adjust_saturation, TF.adjust_saturation),
    ],
)
def test_blend_ops_match_torchvision(c: int, quantised: bool, ours, theirs) -> None:  # type: ignore[no-untyped-def]
    x = _images(c, quantised=quantised)
    f = torch.rand(N) * 2.0
    f[:3] = torch.tensor([0.0, 1.0, 2.0])
    got = ours(x, f)
    torch.testing.assert_close(got, _per_sample(theirs, x, f), atol=1e-6, rtol=0)
    assert got.shape == x.shape and got.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("quantised", [False, True])
def test_hue_matches_torchvision(c: int, quantised: bool) -> None:
    x = _images(c, quantised=quantised)
    x[0] = 0.5  # grey: hue undefined, must stay grey
    shift = torch.rand(N) - 0.5
    shift[:4] = torch.tensor([0.0, -0.5, 0.5, 0.25])
    torch.testing.assert_close(
        ops.adjust_hue(x, shift), _per_sample(TF.adjust_hue, x, shift), atol=1e-5, rtol=0
    )


def test_grayscale_matches_torchvision() -> None:
    x = _images(3)
    ref = torch.stack([TF.rgb_to_grayscale(x[i], num_output_channels=3) for i in range(N)])
    torch.testing.assert_close(ops.to_grayscale(x), ref, atol=1e-6, rtol=0)
    x1 = _images(1)
    torch.testing.assert_close(ops.to_grayscale(x1), x1, atol=0, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("k", [3, 5, 7, 9])  # 3 and 5 take the shifted-sum path, 7 and 9 the conv
def test_gaussian_blur_matches_torchvision(c: int, k: int) -> None:
    x = _images(c, h=11, w=16)
    sigma = torch.rand(N) * 1.9 + 0.1
    sigma[0] = 0.0  # no blur
    ref = torch.stack(
        [
            TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) if sigma[i] > 0 else x[i]
            for i in range(N)
        ]
    )
    torch.testing.assert_close(ops.gaussian_blur(x, sigma, k), ref, atol=1e-6, rtol=0)


def test_solarize_matches_torchvision() -> None:
    x = _images(3, quantised=True)
    torch.testing.assert_close(ops.solarize(x, 0.5), TF.solarize(x, 0.5), atol=0, rtol=0)
    thr = torch.rand(N)
    got = ops.solarize(x, thr)
    torch.testing.assert_close(got, _per_sample(TF.solarize, x, thr), atol=0, rtol=0)
    thr[0] = float("inf")  # off
    torch.testing.assert_close(ops.solarize(x, thr)[0], x[0], atol=0, rtol=0)


def _boxes(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    hh = torch.randint(1, h + 1, (N,), generator=g)
    ww = torch.randint(1, w + 1, (N,), generator=g)
    top = (torch.rand(N, generator=g) * (h - hh + 1)).long()
    left = (torch.rand(N, generator=g) * (w - ww + 1)).long()
    b = torch.stack((top, left, hh, ww), dim=1)
    b[0] = torch.tensor([0, 0, h, w])  # the whole image
    b[1] = torch.tensor([h - 1, w - 1, 1, 1])  # one pixel in the corner
    return b


def _ref_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    out = []
    for i in range(len(x)):
        t, le, h, w = boxes[i].tolist()
        y = TF.resized_crop(x[i], t, le, h, w, [size, size], antialias=False)
        out.append(TF.horizontal_flip(y) if flip[i] else y)
    return torch.stack(out)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [6, 20, 33])  # mostly down-, up- and upsampled boxes
def test_resized_crop_matches_torchvision(c: int, size: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = _images(c, h=16, w=20)
    boxes, flip = _boxes(16, 20, g), torch.rand(N, generator=g) < 0.5
    got = ops.resized_crop(x, boxes, size, flip)
    torch.testing.assert_close(got, _ref_crop(x, boxes, flip, size), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        ops.resized_crop(x, boxes, size), _ref_crop(x, boxes, flip & False, size), atol=1e-5, rtol=0
    )


def test_resized_crop_with_views() -> None:
    g = torch.Generator().manual_seed(2)
    x = _images(3, h=16, w=16)
    boxes = torch.stack([_boxes(16, 16, g) for _ in range(3)])  # (V, N, 4)
    flip = torch.rand(3, N, generator=g) < 0.5
    got = ops.resized_crop(x, boxes, 16, flip)
    assert got.shape == (3, N, 3, 16, 16) and got.is_contiguous()
    for v in range(3):
        torch.testing.assert_close(
            got[v], ops.resized_crop(x, boxes[v], 16, flip[v]), atol=0, rtol=0
        )


@pytest.mark.parametrize("c", [1, 3])
def test_color_jitter_random_order_matches_torchvision(c: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = _images(c, quantised=True)
    factors = torch.cat(
        (torch.rand(N, 3, generator=g) * 1.6 + 0.2, torch.rand(N, 1, generator=g) * 0.4 - 0.2), 1
    )
    factors[0] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # identity
    order = torch.rand(N, 4, generator=g).argsort(dim=1)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    ref = []
    for i in range(N):
        y = x[i]
        for o in order[i].tolist():
            y = fns[o](y, float(factors[i, o]))
        ref.append(y)
    torch.testing.assert_close(
        ops.color_jitter(x, factors, order), torch.stack(ref), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ops.color_jitter(x, factors, order)[0], x[0], atol=0, rtol=0)


def test_functional_ops_leave_input_alone() -> None:
    x = _images(3)
    before = x.clone()
    f = torch.rand(N) + 0.5
    for y in (
        ops.adjust_brightness(x, f),
        ops.adjust_contrast(x, f),
        ops.adjust_saturation(x, f),
        ops.adjust_hue(x, f - 1.0),
        ops.to_grayscale(x),
        ops.gaussian_blur(x, f, 3),
        ops.solarize(x, 0.5),
        ops.color_jitter(x, torch.stack((f, f, f, f - 1.0), 1), torch.arange(4).expand(N, 4)),
    ):
        assert y.shape == x.shape
    torch.testing.assert_close(x, before, atol=0, rtol=0)


def test_gaussian_kernels() -> None:
    k = ops.gaussian_kernels(torch.tensor([0.0, 0.5, 2.0]), 5)
    torch.testing.assert_close(k.sum(1), torch.ones(3))
    torch.testing.assert_close(k[0], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]), atol=0, rtol=0)
    assert (k[2] - k[2].flip(0)).abs().max() < 1e-7 and k[1, 2] > k[
        2, 2
    ]  # symmetric, wider σ flatter
