"""One optimizer step of `fit()`'s loop: views, the forward pass, the loss terms, backward.

The online network sees the V clean views and, when a term mixes images (BSIM), their
mixtures in the same forward pass; the EMA target (BYOL, MSF, ...) sees the clean views only.
`check_finite` stops the run on the first logging window whose mean loss is NaN or inf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from raysl import distributed
from raysl.batches import Batch
from raysl.errors import NonFiniteLossError
from raysl.losses import Outputs
from raysl.runtime import autocast

if TYPE_CHECKING:
    from raysl.augment.pipeline import AugParams
    from raysl.train import _Run

_MIX_STREAM = 0x5EED_0F_A1  # separates the mixing draws from the augmentation draws of a step


def train_step(
    run: _Run, batch: Batch, params: AugParams, step_key: int, epoch: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on this rank's `batch` with augmentation `params`.

    The online network sees the V clean views and, when a term mixes images (BSIM), its
    mixtures in the same forward pass (one pass keeps DDP and batch norm simple).
    """
    device = run.rt.device
    # params stay on the CPU: Augment reads them there (a copy to the GPU and back would
    # block on the GPU's queue twice per step)
    views = run.augment(batch.images, params)  # (V, b, C, S, S)
    V, b = views.shape[:2]
    inputs = views.flatten(0, 1)  # (V*b, C, S, S)
    mix_lam = mix_index = None
    if run.mixer is not None:
        generator = torch.Generator().manual_seed(step_key ^ _MIX_STREAM)  # same on every rank
        mixed, mix_lam, mix_index = run.mixer.mix(views[: run.mixer.mixed_views], generator)
        inputs = torch.cat([inputs, mixed.flatten(0, 1)])
    if run.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with autocast(device, run.autocast):
        h, z, p, z_sub = run.online(inputs)
        z_target = None
        if run.model.target is not None:
            with torch.no_grad():
                z_target = run.model.target(inputs[: V * b])[1].float().view(V, b, -1)
    clean, rest = V * b, len(inputs) - V * b

    def split(
        t: torch.Tensor | None, dim: int = 0
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if t is None:
            return None, None
        t = t.float()
        head, tail = t.split([clean, rest], dim=dim)
        return head.unflatten(dim, (V, b)), (tail.unflatten(dim, (-1, b)) if rest else None)

    (z, z_mix), (p, p_mix), (h, _) = split(z), split(p), split(h)
    out = Outputs(
        z=z,
        sample_ids=batch.index,
        labels=batch.labels,
        h=h,
        p=p,
        z_target=z_target,
        z_sub=split(z_sub, dim=1)[0],
        z_mix=z_mix,
        p_mix=p_mix,
        mix_lam=mix_lam,
        mix_index=mix_index,
        epoch=epoch,
    )
    loss, parts = run.criterion(out)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(run.criterion)
    run.optimizer.step()
    return loss, parts


def check_finite(values: torch.Tensor, names: list[str], epoch: int, step: int) -> None:
    if bool(torch.isfinite(values).all()):
        return
    parts = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values.tolist()))
    raise NonFiniteLossError(
        f"the loss is not finite at epoch {epoch + 1}, step {step + 1} ({parts}); training stopped. "
        "Lower optim.lr, raise the temperatures, or add optim.warmup_epochs."
    )
