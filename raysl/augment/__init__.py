"""Batched, per-sample-random image augmentation on the training device.

`Augment(cfg.augment, channels, image_size, mean, std)` turns a uint8 batch into V
normalised views; `Augment.sample` draws the random parameters (`AugParams`) on the CPU.
"""

from __future__ import annotations

from raysl.augment.pipeline import Augment, AugParams

__all__ = ["AugParams", "Augment"]
