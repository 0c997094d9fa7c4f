"""Batch norm over the global batch on any backend.

`torch.nn.SyncBatchNorm` rejects CPU tensors, so on CPU (gloo) raysl swaps every batch norm
for `GlobalBatchNorm`, which all-reduces the statistics with gradient. Then a W-process run
normalises exactly as one process on the concatenated batch (tests/test_sync_bn.py), which is
what makes distributed runs comparable with single-process ones step by step. On CUDA the
stock `SyncBatchNorm` is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysl import distributed


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics cover every rank's samples.

    Two passes (mean, then the centred sum of squares) match single-process batch norm to
    float precision. Outside training, or in a single process, it is plain batch norm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {x.dim()}D)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and distributed.is_distributed()):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, channels) + (1,) * (x.dim() - 2)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        local_n = torch.tensor([xf.numel() / channels], device=x.device, dtype=xf.dtype)
        sums = distributed.all_reduce_with_grad(torch.cat([xf.sum(dims), local_n]))  # (C + 1,)
        n = sums[-1].detach()
        mean = sums[:channels] / n  # (C,)
        centred = xf - mean.view(shape)
        var = distributed.all_reduce_with_grad((centred * centred).sum(dims)) / n  # biased, (C,)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(
                    (var.detach() * n / (n - 1)).to(self.running_var.dtype), momentum
                )
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every batch norm in `module` by its cross-rank version for `device`."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)


def _to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        ref = next(iter(module.state_dict().values()), None)
        like = (
            {"device": ref.device, "dtype": ref.dtype}
            if ref is not None and ref.is_floating_point()
            else {}
        )
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            **like,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_global(child))
    return module
