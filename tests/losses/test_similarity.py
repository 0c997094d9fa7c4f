"""Similarity (BYOL / SimSiam) against a naive loop over BYOL's eq. 2, its identities, DDP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysl.config import Config
from raysl.losses import Outputs, Similarity
from raysl.reporting import Recorder
from raysl.train import fit
from tests.conftest import TINY
from tests.losses.harness import assert_distributed_equivalent


def similarity_oracle(p: torch.Tensor, t: torch.Tensor) -> float:
    """Mean over ordered view pairs v != w and anchors b of ||p/|p| - t/|t| ||^2 (BYOL eq. 2)."""
    views, batch, dim = p.shape
    total, count = 0.0, 0
    for v in range(views):
        for w in range(views):
            if v == w:
                continue
            for b in range(batch):
                pn = math.sqrt(sum(float(p[v, b, d]) ** 2 for d in range(dim)))
                tn = math.sqrt(sum(float(t[w, b, d]) ** 2 for d in range(dim)))
                total += sum(
                    (float(p[v, b, d]) / pn - float(t[w, b, d]) / tn) ** 2 for d in range(dim)
                )
                count += 1
    return total / count


def _outputs(views: int = 2, batch: int = 6, dim: int = 5, seed: int = 0, **kw) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    z, p, t = torch.randn(3, views, batch, dim, generator=g, dtype=torch.float64).unbind(0)
    return Outputs(z=z, sample_ids=torch.arange(batch), p=p, z_target=t, **kw)


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("target", ["ema", "stopgrad"])
def test_similarity_matches_the_paper(views: int, target: str) -> None:
    out = _outputs(views)
    t = out.z_target if target == "ema" else out.z
    assert Similarity(target)(out).item() == pytest.approx(similarity_oracle(out.p, t), rel=1e-12)


def test_two_views_are_half_byols_symmetrised_loss_and_map_to_simsiam() -> None:
    out = _outputs(2)
    p1, p2 = F.normalize(out.p, dim=-1)
    t1, t2 = F.normalize(out.z_target, dim=-1)
    byol = ((p1 - t2).pow(2).sum(-1) + (p2 - t1).pow(2).sum(-1)).mean()  # BYOL: sum of directions
    assert Similarity("ema")(out).item() == pytest.approx(byol.item() / 2, rel=1e-12)
    z1, z2 = out.z
    q1, q2 = out.p
    simsiam = -(F.cosine_similarity(q1, z2).mean() + F.cosine_similarity(q2, z1).mean()) / 2
    assert Similarity("stopgrad")(out).item() / 2 - 1 == pytest.approx(simsiam.item(), rel=1e-12)


@pytest.mark.parametrize("target", ["ema", "stopgrad"])
def test_gradients_reach_only_the_prediction(target: str) -> None:
    out = _outputs(2)
    p, z, t = (x.clone().requires_grad_() for x in (out.p, out.z, out.z_target))
    Similarity(target)(Outputs(z=z, sample_ids=out.sample_ids, p=p, z_target=t)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None and t.grad is None


def test_requires_follows_the_target() -> None:
    assert Similarity("ema").requires == {"p", "z_target"}
    assert Similarity("stopgrad").requires == {"p", "z"}
    with pytest.raises(ValueError):
        Similarity("online")  # type: ignore[arg-type]


def test_perfect_prediction_gives_zero_and_batch_order_does_not_matter() -> None:
    out = _outputs(2)
    same = Outputs(z=out.z, sample_ids=out.sample_ids, p=3.0 * out.z.flip(0), z_target=out.z)
    assert Similarity("ema")(same).item() == pytest.approx(0.0, abs=1e-12)
    perm = torch.randperm(6)
    permuted = Outputs(
        z=out.z[:, perm], sample_ids=perm, p=out.p[:, perm], z_target=out.z_target[:, perm]
    )
    assert Similarity()(permuted).item() == pytest.approx(Similarity()(out).item(), rel=1e-12)


def test_falls_under_sgd_on_the_predictions() -> None:
    out = _outputs(2, batch=16, dim=8, seed=3)
    p = out.p.clone().requires_grad_()
    optimizer = torch.optim.SGD([p], lr=50.0)  # the mean over 32 anchors makes each step small
    losses = []
    for _ in range(20):
        loss = Similarity()(Outputs(z=out.z, sample_ids=out.sample_ids, p=p, z_target=out.z_target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_edge_cases_single_view_and_zero_vectors() -> None:
    with pytest.raises(ValueError, match="2 views"):
        Similarity()(_outputs(1))
    out = _outputs(2)
    p = torch.zeros_like(out.p).requires_grad_()
    loss = Similarity()(Outputs(z=out.z, sample_ids=out.sample_ids, p=p, z_target=out.z_target))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_bf16_autocast_and_bf16_inputs_stay_close_to_fp32() -> None:
    out = _outputs(2, batch=32, dim=16)
    p, t = out.p.float(), out.z_target.float()
    fp32 = Similarity()(Outputs(z=t, sample_ids=out.sample_ids, p=p, z_target=t))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = Similarity()(Outputs(z=t, sample_ids=out.sample_ids, p=p, z_target=t))
    cast = Similarity()(
        Outputs(
            z=t,
            sample_ids=out.sample_ids,
            p=p.bfloat16().float(),
            z_target=t.bfloat16().float(),
        )
    )
    for value in (auto, cast):
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(fp32.item(), rel=2e-2)


@pytest.mark.dist
@pytest.mark.parametrize(
    ("world", "kwargs", "views", "size"),
    [
        (2, {"target": "ema"}, 3, 12),
        (3, {"target": "stopgrad"}, 2, 3),  # one image per rank
    ],
)
def test_distributed_equals_single_process(world: int, kwargs: dict, views: int, size: int) -> None:
    assert_distributed_equivalent(Similarity, kwargs, world, views=views, size=size)


def test_fit_with_similarity_reports_the_term() -> None:
    recorder = Recorder()
    cfg = Config().override(
        {
            **TINY,
            "epochs": 1,
            "loss.infonce.weight": 0,
            "loss.similarity.weight": 1,
            "loss.similarity.target": "ema",
            "model.pred_hidden_dim": 64,
        }
    )
    fit(cfg, recorder)
    metrics = recorder.epochs[-1]
    assert math.isfinite(metrics["train/loss/similarity"])
    assert 0 <= metrics["train/loss/similarity"] <= 4
    assert "train/loss/infonce" not in metrics
