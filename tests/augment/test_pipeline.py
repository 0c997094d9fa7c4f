"""`Augment`: sampling, selection, the whole pipeline against torchvision, presets."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
import torchvision.transforms as T1
import torchvision.transforms.v2.functional as TF

from raysl.augment import Augment, AugParams
from raysl.augment.pipeline import sample_boxes
from raysl.augment.presets import PRESETS, ViewRecipe, view_recipes
from raysl.config import AugmentConfig

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _aug(preset: str = "simclr", views: int = 2, c: int = 3, image_size: int = 16, **kw) -> Augment:
    """kw: further `AugmentConfig` fields (size = output side)."""
    mean, std = (MEAN3, STD3) if c == 3 else ((0.5,), (0.3,))
    return Augment(AugmentConfig(preset=preset, views=views, **kw), c, image_size, mean, std)


def _images(b: int, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (b, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _equal(a: AugParams, b: AugParams) -> bool:
    return all(torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(AugParams))


def _reference(aug: Augment, images: torch.Tensor, p: AugParams) -> torch.Tensor:
    """torchvision v2 functional ops, image by image, with the same parameters."""
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    S, k, C = aug.out_size, aug.kernel_size, images.shape[1]
    out = torch.empty(aug.views, len(images), C, S, S)
    for v in range(aug.views):
        for i in range(len(images)):
            t, le, h, w = p.boxes[v, i].tolist()
            y = TF.resized_crop(
                TF.to_dtype(images[i], torch.float32, scale=True),
                t,
                le,
                h,
                w,
                [S, S],
                antialias=False,
            )
            y = TF.horizontal_flip(y) if p.flip[v, i] else y
            if not torch.equal(p.jitter[v, i], torch.tensor([1.0, 1.0, 1.0, 0.0])):
                for o in p.order[v, i].tolist():
                    y = fns[o](y, float(p.jitter[v, i, o]))
            y = TF.rgb_to_grayscale(y, num_output_channels=3) if p.gray[v, i] and C == 3 else y
            y = TF.gaussian_blur(y, [k, k], [float(p.sigma[v, i])] * 2) if p.sigma[v, i] > 0 else y
            y = TF.solarize(y, float(p.solarize[v, i])) if math.isfinite(p.solarize[v, i]) else y
            out[v, i] = TF.normalize(y, aug.mean.tolist(), aug.std.tolist())
    return out


@pytest.mark.parametrize(("preset", "c"), [("simclr", 3), ("byol", 3), ("mocov2", 1)])
def test_pipeline_matches_torchvision_per_sample(preset: str, c: int) -> None:
    # 2e-5 on normalised values (observed <= 6e-6): the ops' float32 differences (<= 3e-6,
    # see test_ops.py) pass through up to four jitter blends (factors up to 1.8) and / std.
    aug = _aug(preset, views=2, c=c, blur_prob=0.5, solarize_prob=0.3)
    images = _images(24, c)
    p = aug.sample(24, _gen(1))
    torch.testing.assert_close(aug(images, p), _reference(aug, images, p), atol=2e-5, rtol=0)


def test_output_shape_dtype_and_normalisation() -> None:
    for c in (1, 3):
        aug = _aug("none", views=3, c=c)
        images = _images(5, c)
        out = aug(images, aug.sample(5, _gen()))
        assert out.shape == (3, 5, c, 16, 16) and out.dtype == torch.float32
        mean, std = aug.mean.view(c, 1, 1), aug.std.view(c, 1, 1)
        expect = (images.float() / 255 - mean) / std
        for v in range(3):
            torch.testing.assert_close(out[v], expect, atol=1e-5, rtol=0)
        torch.testing.assert_close(aug.plain(images), expect, atol=1e-5, rtol=0)


def test_plain_resizes_and_float_input() -> None:
    aug = _aug("simclr", image_size=16, size=24)
    images = _images(4)
    out = aug.plain(images)
    assert out.shape == (4, 3, 24, 24)
    ref = TF.normalize(
        TF.resize(TF.to_dtype(images, torch.float32, scale=True), [24, 24], antialias=True),
        list(MEAN3),
        list(STD3),
    )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    x = images.float() / 255
    torch.testing.assert_close(aug.plain(x), out, atol=1e-5, rtol=0)
    assert torch.equal(x, images.float() / 255)  # not normalised in place
    p = aug.sample(4, _gen())
    torch.testing.assert_close(aug(x, p), aug(images, p), atol=1e-5, rtol=0)


def test_sampling_is_deterministic_and_cpu() -> None:
    aug = _aug("byol", views=3)
    a, b, c = aug.sample(64, _gen(7)), aug.sample(64, _gen(7)), aug.sample(64, _gen(8))
    assert _equal(a, b) and not _equal(a, c)
    assert all(getattr(a, f.name).device.type == "cpu" for f in fields(AugParams))
    assert a.boxes.shape == (3, 64, 4) and a.jitter.shape == (3, 64, 4) and a.flip.shape == (3, 64)
    images = _images(64)
    torch.testing.assert_close(aug(images, a), aug(images, b), atol=0, rtol=0)


def test_select_then_apply_equals_apply_then_rows() -> None:
    aug = _aug("simclr", views=2)
    images = _images(32)
    p = aug.sample(32, _gen(3))
    full = aug(images, p)
    rows = torch.tensor([3, 17, 0, 31, 8])
    torch.testing.assert_close(aug(images[rows], p.select(rows)), full[:, rows], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        aug(images[8:24], p.select(slice(8, 24))), full[:, 8:24], atol=1e-6, rtol=0
    )
    mask = torch.arange(32) % 3 == 0
    torch.testing.assert_close(aug(images[mask], p.select(mask)), full[:, mask], atol=1e-6, rtol=0)
    assert len(p.select(rows)) == 5 and len(p.to("cpu")) == 32


def test_per_sample_randomness() -> None:
    aug = _aug("simclr", views=2)
    p = aug.sample(256, _gen())
    for v in range(2):
        assert len({tuple(b) for b in p.boxes[v].tolist()}) > 100
        jittered = (p.jitter[v] != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
        assert 0.7 < jittered.float().mean() < 0.9  # p = 0.8
        assert len(set(p.jitter[v, jittered, 0].tolist())) == int(jittered.sum())
        assert 0.3 < p.flip[v].float().mean() < 0.7 and 0.1 < p.gray[v].float().mean() < 0.3
        assert 0.35 < (p.sigma[v] > 0).float().mean() < 0.65
    assert not torch.equal(p.boxes[0], p.boxes[1])  # the two views differ
    out = aug(_images(256), p)
    assert (out[0] - out[1]).abs().flatten(1).amax(1).min() > 0


def test_jitter_factors_and_order_distribution() -> None:
    aug = _aug("simclr", views=1, jitter_prob=1.0)
    p = aug.sample(6000, _gen(5))
    f = p.jitter[0]
    assert (
        f[:, :3].min() >= 0.2 - 1e-6
        and f[:, :3].max() <= 1.8 + 1e-6
        and f[:, 3].abs().max() <= 0.2 + 1e-6
    )
    assert abs(f[:, 0].mean() - 1.0) < 0.03 and abs(f[:, 3].mean()) < 0.01
    assert torch.equal(
        p.order[0].sort(dim=1).values, torch.arange(4).expand(6000, 4)
    )  # permutations
    counts = torch.unique(p.order[0], dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 6000 / 24 * 0.7  # all 24 orders, roughly uniform


@pytest.mark.parametrize(
    ("hw", "scale"), [((32, 32), (0.08, 1.0)), ((20, 48), (0.2, 1.0)), ((8, 64), (0.9, 1.0))]
)
def test_crop_boxes_follow_torchvision_distribution(
    hw: tuple[int, int], scale: tuple[float, float]
) -> None:
    n, (H, W) = 4000, hw
    recipe = ViewRecipe(scale=scale)
    ours = sample_boxes(n, hw, recipe, _gen(11))
    top, left, h, w = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    torch.manual_seed(11)
    img = torch.zeros(1, H, W)
    theirs = torch.tensor(
        [T1.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    )

    def stats(b: torch.Tensor) -> torch.Tensor:
        t, le, hh, ww = b.double().unbind(1)
        area = hh * ww / (H * W)
        return torch.stack(
            (
                area,
                (ww / hh).log(),
                (t + hh / 2) / H,
                (le + ww / 2) / W,
                (hh == H).double() * (ww == W).double(),
            )
        )

    so, st = stats(ours), stats(theirs)
    se = ((so.var(1) + st.var(1)) / n).sqrt()  # standard error of the difference of means
    assert ((so.mean(1) - st.mean(1)).abs() <= 4 * se + 1e-9).all(), (so.mean(1), st.mean(1))


def test_presets_build_for_any_number_of_views() -> None:
    images = {c: _images(6, c) for c in (1, 3)}
    for preset in PRESETS:
        for views in range(1, 5):
            for c in (1, 3):
                aug = _aug(preset, views=views, c=c)
                out = aug(images[c], aug.sample(6, _gen()))
                assert out.shape == (views, 6, c, 16, 16) and torch.isfinite(out).all()


def test_asymmetric_presets_cycle() -> None:
    r = view_recipes(AugmentConfig(preset="byol", views=3))
    assert (
        r[0].blur_prob == 1.0
        and r[1].blur_prob == 0.1
        and r[1].solarize_prob == 0.2
        and r[2] == r[0]
    )
    weak, strong = view_recipes(AugmentConfig(preset="weak_strong"))
    assert weak.jitter_prob == 0 and weak.scale == (0.2, 1.0) and strong == PRESETS["mocov2"][0]


def test_overrides_apply_to_every_view() -> None:
    cfg = AugmentConfig(
        preset="byol",
        views=2,
        crop_min_scale=0.5,
        jitter_strength=2.0,
        jitter_prob=0.3,
        blur_prob=0.0,
        grayscale_prob=0.1,
        solarize_prob=0.4,
        flip_prob=0.0,
    )
    for r in view_recipes(cfg):
        assert r.scale == (0.5, 1.0) and r.jitter == pytest.approx((0.8, 0.8, 0.4, 0.2))
        assert (r.jitter_prob, r.blur_prob, r.grayscale_prob, r.solarize_prob, r.flip_prob) == (
            0.3,
            0.0,
            0.1,
            0.4,
            0.0,
        )
    assert (
        view_recipes(AugmentConfig(preset="simclr", jitter_strength=4.0))[0].jitter[3] == 0.5
    )  # hue capped
    assert (
        view_recipes(AugmentConfig(preset="simclr")) == PRESETS["simclr"] * 2
    )  # no override: the preset


def test_no_randomness_in_none_and_blur_kernel_size() -> None:
    aug = _aug("none", views=2)
    assert aug.identity and not _aug("crop_flip").identity
    assert [_aug(image_size=s).kernel_size for s in (8, 32, 64, 96)] == [3, 3, 7, 9]
    assert _aug(image_size=32, size=224).kernel_size == 23


def test_rejects_mismatched_params() -> None:
    aug = _aug("simclr", views=2)
    with pytest.raises(ValueError, match="params"):
        aug(_images(4), aug.sample(5, _gen()))
    with pytest.raises(ValueError, match="images"):
        aug(_images(4, size=20), aug.sample(4, _gen()))
