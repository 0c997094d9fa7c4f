"""ICC against naive loops over guijiejie/ICCL's `ICCHead` / `MomentumICCHead`, with PCA checked
by an independent decomposition (numpy SVD); the identity with `Similarity` before the switch;
the switch s(e), the adaptive temperature, the uniformity term; DDP equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysl.config import Config
from raysl.losses import ICC, Outputs, Similarity
from raysl.losses.icc import fit_pca
from raysl.reporting import Recorder
from raysl.train import fit
from tests.conftest import TINY
from tests.losses.harness import assert_distributed_equivalent


# ---- the oracle: the official head's equations, one number at a time ----------------------
def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / max(norm, 1e-12) for x in row]


def _numpy_pca(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and principal axes (columns, descending variance) from an SVD of the centred data."""
    x = np.array([_unit(r) for r in rows])
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean)  # rows of vt: right singular vectors, descending
    axes = vt.T
    for k in range(axes.shape[1]):  # sign convention: largest-magnitude entry positive
        if axes[np.abs(axes[:, k]).argmax(), k] < 0:
            axes[:, k] *= -1
    return mean, axes


def _switch(epoch: float, start: float, end: float, maxscale: float, per: str) -> float:
    if per == "epoch":  # ICCL: `train.global_epoch`, the integer epoch
        epoch = math.floor(epoch)
    if epoch < start:
        return 0.0
    if epoch < end:
        return maxscale * (epoch - start) / (end - start)
    return maxscale


# Differentiable scalar arithmetic on lists of 0-d float64 tensors (autograd gives the
# oracle's gradient).
def _t_unit(row: list) -> list:
    norm = torch.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _t_dot(a: list, b: list) -> torch.Tensor:
    return sum(x * y for x, y in zip(a, b))


def _t_softmax(row: list, temperature) -> list:
    top = max(float(x.detach()) for x in row)  # a constant shift: softmax is invariant to it
    e = [torch.exp((x - top) / temperature) for x in row]
    total = sum(e)
    return [x / total for x in e]


def icc_oracle(
    p: torch.Tensor,
    q: torch.Tensor,
    epoch: float,
    tau1: float = 0.1,
    tau2: float = 0.07,
    ratio: float = 1.0,
    adaptive: bool = False,
    pca: bool = False,
    momentum: bool = False,
    switch: tuple[float, float] = (0.0, 0.0),
    switch_per: str = "epoch",
    maxscale: float = 1.0,
    sim_scale: float | None = None,
) -> torch.Tensor:
    """guijiejie/ICCL `icc_head.py`, per number: per view pair (i, j),
    s * (ratio * L_unif + L_aug) + (1 - s) * L_sim(i, j), averaged over the pairs i < j
    (ICCHead's list path with every view in x1). L_sim(i, j) is ICCHead's
    -cos(p_i, q_j)/2 - cos(p_j, q_i)/2, MomentumICCHead's ||n(p_i) - n(q_j)||^2 +
    ||n(p_j) - n(q_i)||^2 (batch means), or with sim_scale a: a * the mean of the two
    directions' ||n(p) - n(q)||^2. A differentiable scalar in p."""
    views, batch, dim = p.shape
    q = q.detach()
    P = [[[p[v, b, d] for d in range(dim)] for b in range(batch)] for v in range(views)]
    Q = [[[q[v, b, d] for d in range(dim)] for b in range(batch)] for v in range(views)]
    s = _switch(epoch, *switch, maxscale, switch_per)
    pairs = []
    for i in range(views):
        for j in range(i + 1, views):
            p1, p2, q1, q2 = P[i], P[j], Q[i], Q[j]
            cos12 = sum(_t_dot(_t_unit(p1[b]), _t_unit(q2[b])) for b in range(batch)) / batch
            cos21 = sum(_t_dot(_t_unit(p2[b]), _t_unit(q1[b])) for b in range(batch)) / batch
            if sim_scale is not None:
                loss_sim = sim_scale * ((2 - 2 * cos12) + (2 - 2 * cos21)) / 2
            elif momentum:
                loss_sim = (2 - 2 * cos12) + (2 - 2 * cos21)
            else:
                loss_sim = -cos12 / 2 - cos21 / 2
            if pca:
                mean, axes = _numpy_pca([[float(x) for x in r] for r in q1 + q2])
                mean_t, axes_t = torch.from_numpy(mean), torch.from_numpy(axes)

                def move(rows, mean=mean_t, axes=axes_t):
                    out = []
                    for r in rows:
                        centred = [x - mean[d] for d, x in enumerate(_t_unit(r))]
                        out.append(_t_unit([_t_dot(centred, list(axes[:, c])) for c in range(dim)]))
                    return out

                p1, p2, q1, q2 = move(p1), move(p2), move(q1), move(q2)
            m1 = [_t_softmax(_t_unit(r), tau2) for r in q1]
            m2 = [_t_softmax(_t_unit(r), tau2) for r in q2]
            n1, n2 = [], []
            for b in range(batch):
                t1, t2 = tau1, tau1
                if adaptive:
                    t1 = torch.sqrt(sum(x * x for x in m2[b])).detach()  # ||m_other||
                    t2 = torch.sqrt(sum(x * x for x in m1[b])).detach()
                    if momentum:
                        t1, t2 = min(t1, tau1), min(t2, tau1)
                n1.append(_t_softmax(_t_unit(p1[b]), t1))
                n2.append(_t_softmax(_t_unit(p2[b]), t2))
            aug_12 = sum(m1[b][d] * torch.log(n2[b][d]) for b in range(batch) for d in range(dim))
            aug_21 = sum(m2[b][d] * torch.log(n1[b][d]) for b in range(batch) for d in range(dim))
            loss_aug = -(aug_12 / batch + aug_21 / batch) / 2
            pbar = [
                sum(n1[b][d] + n2[b][d] for b in range(batch)) / (2 * batch) for d in range(dim)
            ]
            loss_unif = -(math.log(dim) + sum(torch.log(x) for x in pbar) / dim)
            pairs.append(s * (ratio * loss_unif + loss_aug) + (1 - s) * loss_sim)
    return sum(pairs) / len(pairs)


def _outputs(views: int = 2, batch: int = 6, dim: int = 5, seed: int = 0, epoch: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    z, p, t = torch.randn(3, views, batch, dim, generator=g, dtype=torch.float64).unbind(0)
    return Outputs(z=z, sample_ids=torch.arange(batch), p=p, z_target=t, epoch=epoch)


CASES = [
    {},  # ICCHead's defaults
    {"adaptive": True},
    {"adaptive": True, "momentum": True},
    {"momentum": True},  # MomentumICCHead's defaults (ImageNet: ratio 5, below)
    {"pca": True},
    {"pca": True, "adaptive": True, "tau1": 0.2, "tau2": 0.05, "ratio": 5.0},
    {"momentum": True, "tau1": 0.3, "ratio": 5.0},
    {"sim_scale": 1.0},  # the knob: sim_scale x Similarity
    {"momentum": True, "sim_scale": 0.7, "switch_per": "step"},
    {"pca": True, "maxscale": 0.6, "switch_per": "step"},
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(k) or "defaults")
@pytest.mark.parametrize("views", [2, 3])
def test_icc_matches_the_official_heads(kwargs: dict, views: int) -> None:
    """Value and gradient against the loop over ICCL's heads, float64, 1e-9: the defaults
    (sim_scale None, switch_per epoch) are ICCHead (momentum False) / MomentumICCHead."""
    out = _outputs(views, epoch=2.5)
    switch = (1.0, 5.0)  # s = 0.25 at integer epoch 2, 0.375 at 2.5: both parts count
    p = out.p.clone().requires_grad_()
    out.p = p
    q = out.z_target if kwargs.get("momentum") else out.z
    loss = ICC(**kwargs, switch_start=switch[0], switch_end=switch[1])(out)
    (grad,) = torch.autograd.grad(loss, p)
    want = icc_oracle(p, q, 2.5, switch=switch, **kwargs)
    (want_grad,) = torch.autograd.grad(want, p)
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("momentum", [False, True])
def test_before_the_switch_icc_is_simsiam_or_byol_and_with_scale_one_similarity(
    momentum: bool,
) -> None:
    out = _outputs(3, epoch=4.99)
    p = out.p.clone().requires_grad_()
    out.p = p
    similarity = Similarity("ema" if momentum else "stopgrad")(out)
    (grad_sim,) = torch.autograd.grad(similarity, p)
    kwargs = {"momentum": momentum, "pca": True, "adaptive": True}
    switch = {"switch_start": 5.0, "switch_end": 8.0}
    # sim_scale 1: exactly the `similarity` term
    icc = ICC(**kwargs, **switch, sim_scale=1.0)(out)
    (grad_icc,) = torch.autograd.grad(icc, p)
    assert icc.item() == similarity.item()
    torch.testing.assert_close(grad_icc, grad_sim, rtol=0, atol=0)
    # the default: ICCHead's SimSiam loss -cos = sim / 2 - 1; MomentumICCHead's BYOL sum = 2 sim
    official = ICC(**kwargs, **switch)(out)
    (grad_official,) = torch.autograd.grad(official, p)
    factor, offset = (2.0, 0.0) if momentum else (0.5, -1.0)
    assert official.item() == pytest.approx(factor * similarity.item() + offset, rel=1e-12)
    torch.testing.assert_close(grad_official, factor * grad_sim, rtol=1e-12, atol=1e-15)
    assert ICC(momentum=momentum).requires == Similarity("ema" if momentum else "stopgrad").requires


def test_switch_schedule_at_several_epochs() -> None:
    icc = ICC(switch_start=4.0, switch_end=8.0)
    for epoch, s in [(0.0, 0.0), (3.99, 0.0), (4.0, 0.0), (5.0, 0.25), (6.0, 0.5), (8.0, 1.0)]:
        assert icc.scale(epoch) == pytest.approx(s)
    # ICCL's integer epoch: constant within an epoch, a 4-epoch ramp moves in 4 steps
    assert icc.scale(5.0) == icc.scale(5.5) == icc.scale(5.999) == 0.25
    smooth = ICC(switch_start=4.0, switch_end=8.0, switch_per="step")
    assert smooth.scale(5.5) == pytest.approx(0.375) and smooth.scale(3.99) == 0.0
    assert ICC(switch_start=4.0, switch_end=8.0, maxscale=0.6).scale(6.0) == pytest.approx(0.3)
    assert ICC(switch_start=4.0, switch_end=8.0, maxscale=0.6).scale(100.0) == pytest.approx(0.6)
    step = ICC(switch_start=3.0, switch_end=3.0)  # E0 == E1: a step, as in the code
    assert (step.scale(2.9), step.scale(3.0)) == (0.0, 1.0)
    assert ICC().scale(0.0) == 1.0  # the official default [0, 0]: clustering loss from the start
    with pytest.raises(ValueError):
        ICC(switch_start=5.0, switch_end=4.0)
    with pytest.raises(ValueError, match="switch_per"):
        ICC(switch_per="batch")  # type: ignore[arg-type]


def test_loss_interpolates_linearly_between_the_two_parts() -> None:
    values = [ICC(switch_start=2.0, switch_end=6.0)(_outputs(epoch=e)).item() for e in (0, 4, 6)]
    sim, mid, cluster = values
    assert mid == pytest.approx((sim + cluster) / 2, rel=1e-12)
    simsiam = Similarity("stopgrad")(_outputs()).item() / 2 - 1  # ICCHead's -cos
    assert sim == pytest.approx(simsiam, rel=1e-12)


def test_sim_scale_multiplies_only_the_similarity_part() -> None:
    out = _outputs(epoch=4.0)
    base = ICC(switch_start=2.0, switch_end=6.0, sim_scale=1.0)
    half = ICC(switch_start=2.0, switch_end=6.0, sim_scale=0.5)
    sim = Similarity("stopgrad")(out).item()
    assert base(out).item() - half(out).item() == pytest.approx(0.5 * 0.5 * sim, rel=1e-10)


def test_adaptive_temperature_is_the_other_views_target_norm() -> None:
    out = _outputs(2, dim=6, seed=1)
    # tau2 -> 0 makes every m one-hot, so ||m_other|| = 1 > tau1: the momentum variant clips it
    # to tau1 (= the fixed temperature), ICCHead does not (= temperature 1).
    sharp = {"tau2": 1e-4, "tau1": 0.1}
    clipped = ICC(adaptive=True, momentum=True, **sharp)(out)
    assert clipped.item() == pytest.approx(ICC(momentum=True, **sharp)(out).item(), rel=1e-12)
    unclipped = ICC(adaptive=True, **sharp)(out)
    assert unclipped.item() == pytest.approx(ICC(**{**sharp, "tau1": 1.0})(out).item(), rel=1e-9)
    # a soft target: ||m|| is between 1/sqrt(D) and 1, and the oracle with per-sample norms agrees
    soft = ICC(adaptive=True, tau2=0.5)(out)
    want = icc_oracle(out.p, out.z, 0.0, tau2=0.5, adaptive=True).item()
    assert soft.item() == pytest.approx(want, rel=1e-9)


def _uniformity(p: torch.Tensor, q: torch.Tensor) -> float:
    """L_unif alone: the clustering loss with ratio 1 minus the one with ratio 0."""
    out = Outputs(z=q, sample_ids=torch.arange(p.shape[1]), p=p)
    return (ICC(ratio=1.0)(out) - ICC(ratio=0.0)(out)).item()


def test_uniformity_is_zero_for_a_uniform_marginal_and_positive_otherwise() -> None:
    dim = 5
    q = torch.randn(2, dim, dim, dtype=torch.float64)
    assert _uniformity(torch.ones(2, dim, dim, dtype=torch.float64), q) == pytest.approx(
        0.0, abs=1e-12
    )  # every n is uniform
    one_hot = torch.eye(dim, dtype=torch.float64).expand(2, dim, dim)  # each dim peaks once
    assert _uniformity(one_hot, q) == pytest.approx(0.0, abs=1e-12)
    skewed = torch.randn(2, dim, dim, dtype=torch.float64) + torch.tensor([3.0, 0, 0, 0, 0])
    assert _uniformity(skewed, q) > 0.01


def test_pca_matches_numpy_and_is_a_rotation_of_centred_targets() -> None:
    x = torch.randn(40, 6, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.2])
    mean, basis = fit_pca(x)
    want_mean, want_axes = _numpy_pca(x.tolist())
    np.testing.assert_allclose(mean.numpy(), want_mean, atol=1e-12)
    np.testing.assert_allclose(basis.numpy(), want_axes, atol=1e-9)
    torch.testing.assert_close(basis.T @ basis, torch.eye(6, dtype=torch.float64))
    centred = torch.nn.functional.normalize(x, dim=1) - mean
    variances = (centred @ basis).var(0)
    assert bool((variances[:-1] >= variances[1:]).all())  # descending


def test_gradients_flow_only_through_the_prediction() -> None:
    out = _outputs(2, epoch=1.0)
    p, z = out.p.clone().requires_grad_(), out.z.clone().requires_grad_()
    ICC(pca=True, adaptive=True)(Outputs(z=z, sample_ids=out.sample_ids, p=p)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


def test_collapsed_embeddings_give_finite_loss_and_gradients() -> None:
    p = torch.ones(2, 6, 5, dtype=torch.float64, requires_grad=True)
    q = torch.ones(2, 6, 5, dtype=torch.float64)  # covariance 0: PCA of a single point
    for kwargs in ({"pca": True, "adaptive": True}, {"momentum": True, "adaptive": True}):
        loss = ICC(**kwargs)(Outputs(z=q, sample_ids=torch.arange(6), p=p, z_target=q))
        (grad,) = torch.autograd.grad(loss, p)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_falls_under_sgd_on_the_predictions() -> None:
    out = _outputs(2, batch=32, dim=8, seed=4, epoch=1.0)
    p = out.p.clone().requires_grad_()
    optimizer = torch.optim.SGD([p], lr=20.0)
    losses = []
    for _ in range(30):
        loss = ICC(pca=True, adaptive=True)(Outputs(z=out.z, sample_ids=out.sample_ids, p=p))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2


def test_bf16_autocast_and_bf16_inputs_stay_close_to_fp32() -> None:
    out = _outputs(2, batch=32, dim=16, seed=5, epoch=3.0)
    p, z = out.p.float(), out.z.float()
    term = ICC(pca=True, adaptive=True, switch_start=2.0, switch_end=4.0)
    fp32 = term(Outputs(z=z, sample_ids=out.sample_ids, p=p, epoch=3.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = term(Outputs(z=z, sample_ids=out.sample_ids, p=p, epoch=3.0))
    bf16 = term(Outputs(z=z.bfloat16(), sample_ids=out.sample_ids, p=p.bfloat16(), epoch=3.0))
    assert auto.dtype == torch.float32 and bf16.dtype == torch.float32
    for value in (auto, bf16):
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(fp32.item(), rel=3e-2)


@pytest.mark.dist
@pytest.mark.parametrize(
    ("world", "kwargs", "views", "size"),
    [
        # epochs 0, 1, 2 of the harness: s = 0, 0.25, 0.5 (similarity, then the mix)
        (2, {"pca": True, "adaptive": True, "switch_start": 0.0, "switch_end": 4.0}, 2, 12),
        # s = 1, 3 view pairs, one image per rank
        (3, {"momentum": True, "pca": True, "adaptive": True, "ratio": 5.0}, 3, 3),
        (2, {"pca": True, "adaptive": True, "switch_start": 1.0, "switch_end": 2.0}, 2, 2),
        # MomentumICCHead's similarity part (the default sim_scale) mixed in: s = 0, 0.25, 0.5
        (2, {"momentum": True, "adaptive": True, "switch_start": 0.0, "switch_end": 4.0}, 2, 4),
    ],
)
def test_distributed_equals_single_process(world: int, kwargs: dict, views: int, size: int) -> None:
    assert_distributed_equivalent(ICC, kwargs, world, views=views, size=size)


def test_fit_with_icc_reports_the_term() -> None:
    recorder = Recorder()
    cfg = Config().override(
        {
            **TINY,
            "loss.infonce.weight": 0,
            "loss.icc.weight": 1,
            "loss.icc.pca": True,
            "loss.icc.adaptive": True,
            "loss.icc.switch_start": 0.5,
            "loss.icc.switch_end": 1.5,
            "model.pred_hidden_dim": 64,
        }
    )
    fit(cfg, recorder)
    assert [m["epoch"] for m in recorder.epochs] == [1.0, 2.0]
    for metrics in recorder.epochs:
        assert math.isfinite(metrics["train/loss/icc"]) and "train/loss/infonce" not in metrics
