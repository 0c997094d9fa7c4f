"""Sub-network exits for SelfCon (Bae et al., 2023, arXiv:2106.15499, §3; raymin0223/
self-contrastive-learning `networks/resnet_big.py`).

An exit branches off after a backbone stage and maps that stage's output to a feature of the
backbone's width F, so its projection is one more "view" of the image:
  fc:    global average pool -> Linear(C_stage, F)
  same:  fresh (unshared) copies of the remaining stages -> pool
  small: the remaining stages with half the blocks -> pool (ResNets; the ConvNet has one
         block per stage, so there `small` equals `same`)
"""

from __future__ import annotations

import copy

from torch import nn

from raysl.models.backbones import Backbone

EXIT_SIZES = ("fc", "small", "same")


def make_exit(backbone: Backbone, stage: int, size: str) -> nn.Module:
    """The sub-network from the output of `stage` (1-based) to a (B, F) feature."""
    n_stages = len(backbone.stages)
    if not 1 <= stage < n_stages:
        raise ValueError(f"an exit must follow one of stages 1..{n_stages - 1} (got {stage})")
    if size not in EXIT_SIZES:
        raise ValueError(f"exit size must be one of {EXIT_SIZES} (got {size!r})")
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if size == "fc":
        return nn.Sequential(
            *pool, nn.Linear(backbone.stage_channels[stage - 1], backbone.feature_dim)
        )
    if size == "small" and backbone.make_small_stages is not None:
        rest = backbone.make_small_stages()[stage:]
    else:
        rest = [copy.deepcopy(s) for s in backbone.stages[stage:]]
        for module in nn.Sequential(*rest).modules():  # unshared, freshly initialised
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return nn.Sequential(*rest, *pool)
