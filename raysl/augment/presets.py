"""Per-view augmentation recipes and the named presets of `augment.preset`.

A preset is a tuple of `ViewRecipe`s; view v uses recipe v mod len(preset), so a symmetric
preset has one recipe and an asymmetric one (byol, weak_strong) has one per view. The op
order is fixed (torchvision's usual order): random resized crop, horizontal flip, colour
jitter (random op order per sample), grayscale, Gaussian blur, solarize.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raysl.config import AugmentConfig


@dataclass(frozen=True)
class ViewRecipe:
    """The random augmentation of one view; every probability is per sample.

    scale: area fraction range of the random resized crop (`RandomResizedCrop`); None = no
    crop, the whole image is resized to the output side. ratio: aspect-ratio range, sampled
    log-uniformly. jitter: (brightness, contrast, saturation, hue) magnitudes m, as
    `ColorJitter(m_b, m_c, m_s, m_h)`, applied with probability jitter_prob. blur_sigma: σ
    range of the Gaussian blur. solarize_threshold: pixels >= it are inverted.
    """

    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    jitter_prob: float = 0.0
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5

    @property
    def is_identity(self) -> bool:
        """True when the view has no randomness: only a resize to the output side."""
        return (
            self.scale is None
            and self.flip_prob == 0
            and (self.jitter_prob == 0 or not any(self.jitter))
            and self.grayscale_prob == self.blur_prob == self.solarize_prob == 0
        )


# SimCLR (Chen et al., 2020, arXiv:2002.05709, appendix A): colour distortion of strength 1.
_SIMCLR = ViewRecipe(
    scale=(0.08, 1.0),
    jitter=(0.8, 0.8, 0.8, 0.2),
    jitter_prob=0.8,
    grayscale_prob=0.2,
    blur_prob=0.5,
)
# MoCo v2 (Chen et al., 2020, arXiv:2003.04297): the `aug_plus` recipe of facebookresearch/moco.
_MOCOV2 = ViewRecipe(
    scale=(0.2, 1.0),
    jitter=(0.4, 0.4, 0.4, 0.1),
    jitter_prob=0.8,
    grayscale_prob=0.2,
    blur_prob=0.5,
)
# BYOL (Grill et al., 2020, arXiv:2006.07733, table 6): two different view distributions.
_BYOL_1 = ViewRecipe(
    scale=(0.08, 1.0),
    jitter=(0.4, 0.4, 0.2, 0.1),
    jitter_prob=0.8,
    grayscale_prob=0.2,
    blur_prob=1.0,
)
_BYOL_2 = replace(_BYOL_1, blur_prob=0.1, solarize_prob=0.2)
_CROP_FLIP = ViewRecipe(scale=(0.2, 1.0))

PRESETS: dict[str, tuple[ViewRecipe, ...]] = {
    "simclr": (_SIMCLR,),
    "mocov2": (_MOCOV2,),
    "byol": (_BYOL_1, _BYOL_2),
    # CMSF (Navaneet et al., 2021, arXiv:2112.04607, `--weak_strong`): view 0 is the weak
    # target (crop + flip), view 1 the strong MoCo-v2 query.
    "weak_strong": (_CROP_FLIP, _MOCOV2),
    # SupCon (Khosla et al., 2020, arXiv:2004.11362) CIFAR recipe: no blur.
    "supcon": (replace(_MOCOV2, blur_prob=0.0),),
    "crop_flip": (_CROP_FLIP,),
    "none": (ViewRecipe(scale=None, flip_prob=0.0),),
}


def view_recipes(cfg: AugmentConfig) -> tuple[ViewRecipe, ...]:
    """The `cfg.views` recipes of `cfg.preset`, cycled, with the set overrides applied to each.

    `crop_min_scale` sets scale = (crop_min_scale, 1) (also on `none`, which then crops);
    `jitter_strength` multiplies the four jitter magnitudes (hue capped at 0.5), so it
    cannot add jitter to a view without any; the probabilities replace the preset's.
    """
    base = PRESETS[cfg.preset]
    changes: dict[str, object] = {
        name: value
        for name in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "flip_prob")
        if (value := getattr(cfg, name)) is not None
    }
    if cfg.crop_min_scale is not None:
        changes["scale"] = (cfg.crop_min_scale, 1.0)
    out = []
    for v in range(cfg.views):
        recipe = replace(base[v % len(base)], **changes)  # type: ignore[arg-type]
        if cfg.jitter_strength is not None:
            b, c, s, h = (m * cfg.jitter_strength for m in recipe.jitter)
            recipe = replace(recipe, jitter=(b, c, s, min(h, 0.5)))
        out.append(recipe)
    return tuple(out)
