"""The CPU step's options: `memory_format` and `precision` (bench_loop.py part 3 times them).

The CPU default stays NCHW fp32, the previous code path, because its results are exact; the
opt-ins run and are labelled, and the default's gradients are checked against float64.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from raysl.config import Config
from raysl.models import build_model
from raysl.reporting import Recorder
from raysl.runtime import use_channels_last
from raysl.train import fit
from tests.conftest import TINY, run_cli


def test_auto_is_nhwc_on_cuda_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_channels_last("auto", cpu) and use_channels_last("auto", cuda)
    assert use_channels_last("channels_last", cpu)
    assert not use_channels_last("contiguous", cuda)


def test_cpu_default_is_the_contiguous_path_bit_for_bit() -> None:
    """`memory_format: auto` on CPU is exactly `contiguous` (the code path before the key)."""
    runs = {}
    for setting in ("auto", "contiguous"):
        recorder = Recorder()
        fit(Config().override({**TINY, "epochs": 1, "memory_format": setting}), recorder)
        runs[setting] = [(s["train/loss"], s["lr"]) for s in recorder.steps]
    assert runs["auto"] == runs["contiguous"]


@pytest.mark.parametrize(
    "options", [{"memory_format": "channels_last"}, {"precision": "bf16"}], ids=["nhwc", "bf16"]
)
def test_cpu_opt_ins_train(options: dict) -> None:
    recorder = Recorder()
    summary = fit(Config().override({**TINY, "epochs": 1, **options}), recorder)
    assert all(math.isfinite(s["train/loss"]) for s in recorder.steps)
    assert 0 <= summary["val/knn_top1"] <= 100


def test_cpu_default_gradients_match_float64() -> None:
    """The ConvNet in the format raysl trains it in on CPU: every fp32 gradient within 5e-3
    (relative to its largest entry) of the float64 gradient, so no reduced-precision path
    (bf16 autocast is ~0.3 off here) has crept into the default.

    The bound leaves room for fp32 sums over batch x 28 x 28 = 200k terms, whose error
    depends on the CPU's kernels: measured up to 1.8e-5 on an AVX-512 machine but 1.5e-3 on
    an AVX2-only EPYC (batch norm's backward in the 28 x 28 layers), which failed a 1e-4
    bound."""
    torch.manual_seed(0)
    cfg = Config().override({"model.width": 16})
    backbone = build_model(cfg.model, 1, 28, {"z"}).online.encoder.backbone
    fmt = torch.channels_last if use_channels_last("auto", torch.device("cpu")) else None
    x = torch.randn(256, 1, 28, 28)  # [B, C, H, W]
    grads = {}
    for dtype in (torch.float64, torch.float32):
        model = copy.deepcopy(backbone).to(dtype)
        inputs = x.to(dtype)
        if fmt is not None:
            model, inputs = model.to(memory_format=fmt), inputs.contiguous(memory_format=fmt)
        model(inputs).square().sum().backward()
        grads[dtype] = [p.grad.double() for p in model.parameters()]
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64], strict=True):
        assert float((g32 - g64).abs().max() / g64.abs().max()) < 5e-3


def test_bad_memory_format_is_refused_naming_the_key(tmp_path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("config:\n  memory_format: nhwc\n  data: {source: synthetic}\n")
    result = run_cli("train", str(run), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "memory_format" in result.stderr
    assert not (tmp_path / "out").exists()
