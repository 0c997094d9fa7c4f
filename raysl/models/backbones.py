"""Backbones with access to every stage's output (SelfCon's sub-network exits need them)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import Tensor, nn

from raysl.models.pool import MaxPool2x2


class Backbone(nn.Module):
    """A stem followed by stages; `forward` pools the last stage to (B, F).

    Attributes:
        stage_channels: channels of each stage's output.
        feature_dim: F, the pooled feature size (= stage_channels[-1]).
        make_small_stages: builds fresh stages with half the blocks (SelfCon's `small`
            sub-networks), or None where stages cannot be halved.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        stage_channels: Sequence[int],
        make_small_stages: Callable[[], list[nn.Module]] | None = None,
    ):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(stage_channels)
        self.feature_dim = self.stage_channels[-1]
        self.make_small_stages = make_small_stages

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) images -> the output of every stage, (B, C_s, H_s, W_s) each."""
        outputs = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return pool(x)


def pool(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C) global average."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def convnet(in_channels: int, width: int = 32) -> Backbone:
    """A small 4-stage ConvNet for CPU work: widths w, 2w, 4w, 8w; stages 2-4 halve the side.

    At w=32 it has ~0.4 M parameters and 256-d features; on 28x28 images it trains a SimCLR
    step at several hundred image pairs per second on two CPU cores. Its pools are
    `nn.MaxPool2d(2, ceil_mode=True)` computed faster on the CPU, with identical results
    (`raysl.models.pool`).
    """
    widths = [width, 2 * width, 4 * width, 8 * width]
    stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
    stages = [nn.Sequential(*_conv_bn_relu(width, widths[0]))]
    for c_in, c_out in itertools.pairwise(widths):
        stages.append(nn.Sequential(MaxPool2x2(), *_conv_bn_relu(c_in, c_out)))
    return Backbone(stem, stages, widths)


RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


def resnet(name: str, in_channels: int, cifar_stem: bool) -> Backbone:
    """torchvision's ResNet-18/34/50, randomly initialised, with an optional CIFAR stem.

    The CIFAR stem (3x3 stride-1 conv, no max-pool) is what SimCLR's CIFAR experiments use
    (Chen et al., 2020, Appendix B.9); without it CIFAR SimCLR stalls around 76 % kNN
    (lightly-ai/lightly#1419).
    """
    net = RESNETS[name](weights=None)
    if cifar_stem:
        conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        stem = nn.Sequential(conv1, net.bn1, net.relu)
    else:
        conv1 = net.conv1
        if in_channels != 3:
            conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        stem = nn.Sequential(conv1, net.bn1, net.relu, net.maxpool)
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    expansion = 4 if name == "resnet50" else 1
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    return Backbone(stem, stages, channels, make_small_stages=lambda: _half_depth_stages(name))


def _half_depth_stages(name: str) -> list[nn.Module]:
    """Fresh ResNet stages with half the blocks of `name` (at least one per stage)."""
    full = RESNETS[name](weights=None)
    layers = (full.layer1, full.layer2, full.layer3, full.layer4)
    half = torchvision.models.resnet.ResNet(
        type(full.layer1[0]), [max(1, len(layer) // 2) for layer in layers]
    )
    return [half.layer1, half.layer2, half.layer3, half.layer4]


def build_backbone(
    name: str, in_channels: int, image_size: int, width: int = 32, stem: str = "auto"
) -> Backbone:
    """Build a backbone by config name; `stem="auto"` uses the CIFAR stem below 100 px."""
    if name == "convnet":
        return convnet(in_channels, width)
    cifar_stem = stem == "cifar" or (stem == "auto" and image_size < 100)
    return resnet(name, in_channels, cifar_stem)
