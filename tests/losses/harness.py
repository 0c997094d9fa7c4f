"""Distributed correctness of a loss term, by definition: W processes on a split global batch
equal one process on the whole batch — the loss, every parameter gradient after DDP's
averaging, and the term's state (memory banks, pools) — over several optimizer steps.

A tiny float64 model produces every output a term may read (z, p, an EMA target, sub-network
exits, mixed images), so the comparison can be tight (1e-9) and runs in seconds on CPU with
real gloo process groups. Usage in a term's test:

    @pytest.mark.dist
    @pytest.mark.parametrize("world", [2, 3])
    def test_distributed(world):
        assert_distributed_equivalent(SupCon, {"temperature": 0.1}, world)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from raysl import distributed
from raysl.losses import LossTerm, Outputs
from tests.conftest import run_distributed

SIDE, CLASSES, DATASET = 4, 3, 60  # images are 1 x 4 x 4; labels in [0, 3); 60 dataset rows


class Tiny(nn.Module):
    """A trunk with every head a loss term may read."""

    def __init__(self, dim: int = 4, exits: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 8), nn.Tanh())
        self.projector = nn.Linear(8, dim)
        self.predictor = nn.Linear(dim, dim)
        self.exit_heads = nn.ModuleList(nn.Linear(8, dim) for _ in range(exits))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.trunk(x)
        z = self.projector(h)
        return h, z, self.predictor(z), torch.stack([head(h) for head in self.exit_heads])


def global_batch(
    step: int, views: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (V, G, 1, S, S), dataset ids (G,) and labels (G,) of step `step`, fixed by the step."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randperm(DATASET, generator=g)[:size]
    labels = torch.randint(0, CLASSES, (DATASET,), generator=torch.Generator().manual_seed(7))[ids]
    base = torch.rand(size, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(views, size, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    return base + noise, ids, labels


def _outputs(
    model: nn.Module,
    target: nn.Module,
    term: LossTerm,
    views: torch.Tensor,
    ids,
    labels,
    step: int,
    shards: int,
) -> Outputs:
    """What the training loop builds for `term`, for this process's `views` (V, b, ...).

    A single process emulating W ranks mixes each of its W shards separately, as each rank
    would (partners come from the same rank).
    """
    V, b = views.shape[:2]
    batch = views.flatten(0, 1)
    lam = index = None
    if "z_mix" in term.requires:
        per = b // shards
        parts = [
            term.mix(
                views[: term.mixed_views, s * per : (s + 1) * per],
                torch.Generator().manual_seed(step),
            )
            for s in range(shards)
        ]
        mixed = torch.cat([p[0] for p in parts], dim=1)
        lam = torch.cat([p[1] for p in parts])
        index = torch.cat([p[2] + s * per for s, p in enumerate(parts)])
        batch = torch.cat([batch, mixed.flatten(0, 1)])
    h, z, p, z_sub = model(batch)
    with torch.no_grad():
        z_target = target(batch[: V * b]).view(V, b, -1)
    n = V * b
    return Outputs(
        z=z[:n].view(V, b, -1),
        sample_ids=ids,
        labels=labels,
        h=h[:n].view(V, b, -1),
        p=p[:n].view(V, b, -1),
        z_target=z_target,
        z_sub=z_sub[:, :n].unflatten(1, (V, b)),
        z_mix=z[n:].unflatten(0, (-1, b)) if lam is not None else None,
        p_mix=p[n:].unflatten(0, (-1, b)) if lam is not None else None,
        mix_lam=lam,
        mix_index=index,
        epoch=float(step),
    )


def run_steps(
    term_cls: type[LossTerm],
    kwargs: dict[str, Any],
    rank: int,
    world: int,
    shards: int,
    steps: int,
    n_views: int,
    size: int,
) -> dict:
    """`steps` SGD steps of `term` on this rank's shard; records losses, grads and final state."""
    model = Tiny().double()
    target = nn.Sequential(
        copy.deepcopy(model.trunk), copy.deepcopy(model.projector)
    ).requires_grad_(False)
    term = term_cls(**kwargs).double()
    # the tiny model has every head; a term uses some of them
    trained = (
        nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        if world > 1
        else model
    )
    params = list(model.parameters()) + list(term.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    record: dict[str, list] = {"loss": [], "grads": []}
    per = size // world
    rows = slice(rank * per, (rank + 1) * per)
    for step in range(steps):
        views, ids, labels = global_batch(step, n_views, size)
        out = _outputs(
            trained,
            target,
            term,
            views[:, rows],
            ids[rows],
            labels[rows],
            step,
            shards if world == 1 else 1,
        )
        loss = term(out)
        optimizer.zero_grad()
        loss.backward()
        distributed.average_gradients(term)
        record["loss"].append(distributed.all_reduce_mean(loss.detach()).item())
        record["grads"].append([p.grad.clone() if p.grad is not None else None for p in params])
        optimizer.step()
        with torch.no_grad():  # EMA target, as the loop does after every step
            for t, o in zip(
                target.parameters(), [*model.trunk.parameters(), *model.projector.parameters()]
            ):
                t.lerp_(o, 0.1)
    record["state"] = {k: v.clone() for k, v in term.state_dict().items()}
    return record


def _worker(
    rank: int, world: int, term_cls: type[LossTerm], kwargs: dict, steps: int, views: int, size: int
) -> dict:
    return run_steps(term_cls, kwargs, rank, world, world, steps, views, size)


def assert_distributed_equivalent(
    term_cls: type[LossTerm],
    kwargs: dict[str, Any],
    world: int,
    steps: int = 3,
    views: int = 2,
    size: int = 12,
    tol: float = 1e-9,
) -> None:
    """W real gloo processes == one process on the concatenated batch, at every step."""
    single = run_steps(term_cls, kwargs, 0, 1, world, steps, views, size)
    results = run_distributed(_worker, world, term_cls, kwargs, steps, views, size)
    for rank, result in enumerate(results):
        for step in range(steps):
            assert abs(result["loss"][step] - single["loss"][step]) <= tol * max(
                1.0, abs(single["loss"][step])
            ), f"rank {rank}, step {step}: loss {result['loss'][step]} != {single['loss'][step]}"
            for i, (got, want) in enumerate(zip(result["grads"][step], single["grads"][step])):
                if want is None:
                    assert got is None or not got.abs().any(), (
                        f"rank {rank} step {step}: grad {i} should be zero"
                    )
                    continue
                torch.testing.assert_close(
                    got, want, atol=tol, rtol=1e-7, msg=f"rank {rank}, step {step}, parameter {i}"
                )
        for key, want in single["state"].items():
            torch.testing.assert_close(
                result["state"][key], want, atol=tol, rtol=1e-7, msg=f"rank {rank}: state {key}"
            )
