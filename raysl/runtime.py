"""Where a process runs: its device, its rank, and how the loop uses the hardware."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from raysl.errors import ConfigError, Problem


@dataclass(frozen=True)
class Runtime:
    """This process's device and its place in the process group (rank 0 of 1 when alone)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    # devices this process holds, for `cost/device_hours`: GPUs (a fraction where trials
    # share one, e.g. a Tune trial's reservation), else CPU cores; None: 1 GPU on cuda, else
    # torch's intra-op threads (which Ray sets to the CPUs a worker reserves)
    devices: float | None = None

    def devices_held(self) -> float:
        """Devices the whole run holds, every rank together (see `devices`)."""
        if self.devices is not None:
            own = float(self.devices)
        else:
            own = 1.0 if self.device.type == "cuda" else float(torch.get_num_threads())
        return own * self.world_size

    @classmethod
    def from_env(cls, device: str = "auto") -> Runtime:
        """From torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); starts the group if needed.

        Ray Train sets the same variables and starts the group itself before the loop runs.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                Problem("is 'cuda' but no GPU is visible; use device: auto or cpu", key="device")
            )
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(dev, rank, world)


def place_images(images: torch.Tensor, device: torch.device, policy: str) -> torch.Tensor:
    """Keep uint8 training images on the GPU when they fit comfortably (`data.on_device`).

    "auto" moves them when they take under a quarter of the free GPU memory; otherwise they
    stay in pinned host memory and each batch is copied without blocking.
    """
    if device.type != "cuda":
        return images
    if policy == "always":
        return images.to(device)
    if policy == "auto" and images.nbytes < 0.25 * torch.cuda.mem_get_info(device)[0]:
        return images.to(device)
    return images.pin_memory()


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bf16 autocast on `device`, or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def use_channels_last(setting: str, device: torch.device) -> bool:
    """Whether the model and its inputs are NHWC (`memory_format`): `auto` on CUDA only.

    On CPU (PyTorch 2.14, oneDNN) channels-last convolutions are ~1.4x faster, but on the
    AVX-512 machine measured, channels-last batch norm was less exact: the small ConvNet's
    fp32 gradients came out ~1e-2 off float64 (NCHW: ~1e-5), and kNN accuracy fell 1.8 points
    over 3 seeds (benchmarks/RESULTS.md, "The CPU step"). On an AVX2-only CPU both formats
    are ~1e-3 off, so NCHW stays the CPU default as the measured, unchanged path.
    `channels_last` opts in anyway.
    """
    return setting == "channels_last" or (setting == "auto" and device.type == "cuda")
