"""Per-step schedules: warm-up + cosine lr, BYOL's cosine EMA momentum, lr scaling, LARS."""

from __future__ import annotations

import math

import pytest
import torch

from raysl.losses.base import WeightSchedule
from raysl.optim import LARS, scaled_lr
from raysl.schedules import ema_momentum, warmup_cosine


def test_warmup_then_cosine() -> None:
    lr = warmup_cosine(1.0, 100, warmup_steps=10, final_ratio=0.1)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert bool((lr[10:].diff() <= 1e-12).all()) and lr[-1] > 0.1


def test_ema_momentum_goes_from_base_to_one() -> None:
    tau = ema_momentum(0.99, 1000)
    assert tau[0] == pytest.approx(0.99) and tau[-1] == pytest.approx(1.0, abs=1e-6)
    assert tau[500] == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)


def test_lr_scaling() -> None:
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "none") == 0.3


def test_weight_schedule_ramps() -> None:
    switch = WeightSchedule(weight=1.0, ramp_from=0.0, ramp_start=5, ramp_end=7)
    assert [switch(e) for e in (0, 5, 6, 7, 9)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert WeightSchedule(weight=2.0)(3) == 2.0
    step = WeightSchedule(weight=1.0, ramp_from=0.0, ramp_start=2, ramp_end=2)
    assert step(1.99) == 0.0 and step(2) == 1.0
    assert WeightSchedule(weight=0.0, ramp_from=1.0, ramp_start=0, ramp_end=4)(2) == 0.5
    assert (
        WeightSchedule(weight=0.0).always_zero
        and not WeightSchedule(0.0, ramp_from=1.0).always_zero
    )


def test_lars_scales_the_step_by_the_trust_ratio() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS(
        [
            {"params": [w], "weight_decay": 0.0, "lars": True},
            {"params": [b], "weight_decay": 0.0, "lars": False},
        ],
        lr=1.0,
        momentum=0.0,
        trust=0.1,
    )
    w.grad = torch.tensor([0.0, 10.0])  # ||g|| = 10 -> ratio 0.1 * 5 / 10 = 0.05
    b.grad = torch.tensor([2.0])
    opt.step()
    assert w.tolist() == pytest.approx([3.0, 3.5]) and b.tolist() == pytest.approx([-1.0])
