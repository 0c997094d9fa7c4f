"""SelfCon against a naive loop over `ConLoss`'s semantics (methods.md §4.2), its identities
with SupCon and InfoNCE, the multi-exit model it asks for, and distributed equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysl.config import Config, ModelConfig
from raysl.losses import InfoNCE, Outputs, SelfCon, SupCon, build_criterion
from raysl.models import build_model
from raysl.reporting import Recorder
from raysl.train import fit
from tests.conftest import TINY
from tests.losses.harness import assert_distributed_equivalent


def con_loss(vectors: list[list[float]], ids: list[int], anchors, columns, tau: float) -> float:
    """Mean over anchors a with a positive of -1/|P(a)| Σ_{p∈P(a)} log softmax_{C(a)}(s_a/τ)_p.

    C(a) = `columns` without a (the denominator); P(a) = the members of C(a) with a's id.
    """

    def sim(i: int, j: int) -> float:
        return sum(x * y for x, y in zip(vectors[i], vectors[j])) / tau

    total, count = 0.0, 0
    for a in anchors:
        others = [c for c in columns if c != a]
        positives = [p for p in others if ids[p] == ids[a]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(sim(a, c)) for c in others))
        total += -sum(sim(a, p) - log_denominator for p in positives) / len(positives)
        count += 1
    return total / count if count else 0.0


def selfcon_oracle(
    z: torch.Tensor,
    z_sub: torch.Tensor,
    ids: list[int],
    tau: float,
    alpha: float = 0.0,
    base_tau: float | None = None,
) -> float:
    """ConLoss as `main_represent.py` wires it, with the outputs of every image listed one by one.

    alpha = 0: anchors and contrast set = every output (G_e(x_v) and F(x_v)).
    alpha > 0: SupCon on the F outputs alone + alpha x (anchors = G outputs, contrast set =
    G and F outputs). Positives share the id (label, or image for SelfCon-SU).
    """
    exits, views, batch, _ = z_sub.shape
    vectors, owner, is_sub = [], [], []
    for b in range(batch):
        for v in range(views):
            for e in range(exits):
                vectors.append(F.normalize(z_sub[e, v, b], dim=0).tolist())
                owner.append(ids[b])
                is_sub.append(True)
            vectors.append(F.normalize(z[v, b], dim=0).tolist())
            owner.append(ids[b])
            is_sub.append(False)
    every = range(len(vectors))
    if alpha == 0:
        loss = con_loss(vectors, owner, every, every, tau)
    else:
        backbone = [i for i in every if not is_sub[i]]
        sub = [i for i in every if is_sub[i]]
        loss = con_loss(vectors, owner, backbone, backbone, tau) + alpha * con_loss(
            vectors, owner, sub, every, tau
        )
    return loss * (tau / base_tau if base_tau else 1.0)


def _outputs(exits: int, views: int, batch: int, seed: int = 0, labels=None) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(views, batch, 5, generator=g, dtype=torch.float64)
    z_sub = torch.randn(exits, views, batch, 5, generator=g, dtype=torch.float64)
    if labels is None:
        labels = torch.randint(0, 3, (batch,), generator=g)
    return Outputs(z=z, sample_ids=torch.arange(batch) + 100, labels=labels, z_sub=z_sub)


@pytest.mark.parametrize(
    ("exits", "views", "supervised", "alpha"),
    [
        (1, 1, True, 0.0),  # SelfCon-S, the default
        (2, 1, True, 0.0),
        (1, 2, True, 0.0),  # SelfCon-M
        (1, 1, False, 0.0),  # SelfCon-SU: positives are the same image's other exit
        (2, 2, False, 0.0),
        (2, 1, True, 0.5),  # SelfCon-S*
        (1, 2, True, 1.5),  # SelfCon-M*
        (2, 1, False, 0.5),  # SelfCon-SU*: the F-only term has no positive at all
        (1, 2, False, 0.5),
    ],
)
def test_selfcon_matches_conloss(exits: int, views: int, supervised: bool, alpha: float) -> None:
    out = _outputs(exits, views, 6, seed=exits + 10 * views)
    ids = (out.labels if supervised else out.sample_ids).tolist()
    for tau, base in [(0.1, None), (0.5, 0.07)]:
        got = SelfCon(tau, supervised=supervised, alpha=alpha, base_temperature=base)(out)
        assert got.item() == pytest.approx(
            selfcon_oracle(out.z, out.z_sub, ids, tau, alpha, base), rel=1e-10
        )


def test_single_view_selfcon_is_supcon_on_the_stacked_exit_and_backbone_views() -> None:
    out = _outputs(2, 1, 8, seed=1)
    stacked = Outputs(
        z=torch.cat([out.z_sub[:, 0], out.z]), sample_ids=out.sample_ids, labels=out.labels
    )
    assert SelfCon(0.2)(out).item() == pytest.approx(SupCon(0.2)(stacked).item(), rel=1e-12)


def test_unsupervised_selfcon_without_exit_contribution_is_infonce() -> None:
    out = _outputs(2, 2, 8, seed=2)
    infonce = InfoNCE(0.2)(out).item()
    no_exits = Outputs(z=out.z, sample_ids=out.sample_ids, z_sub=out.z_sub[:0])  # E = 0
    assert SelfCon(0.2, supervised=False)(no_exits).item() == pytest.approx(infonce, rel=1e-12)
    # SelfCon-MU*: loss(alpha) = InfoNCE on F's two views + alpha x (exit-anchored term)
    one, two = (SelfCon(0.2, supervised=False, alpha=a)(out).item() for a in (1.0, 2.0))
    assert 2 * one - two == pytest.approx(infonce, rel=1e-10)


def test_requires_and_exits_follow_the_arguments() -> None:
    assert SelfCon().requires == {"z", "z_sub", "labels"}
    assert SelfCon(supervised=False).requires == {"z", "z_sub"}
    term = SelfCon(exits=(1, 3), exit_size="same")
    assert (term.exits, term.exit_size) == ((1, 3), "same")
    with pytest.raises(ValueError):
        SelfCon(exits=())


# ---- edge cases ----------------------------------------------------------------------------
def test_anchors_without_positive_give_no_nan() -> None:
    out = _outputs(1, 1, 6, seed=3, labels=torch.arange(6))  # every label distinct
    out.z.requires_grad_(True)
    out.z_sub.requires_grad_(True)
    for alpha in (0.0, 1.0):  # alpha > 0: the F-only SupCon-S term has no positive at all
        loss = SelfCon(0.1, alpha=alpha)(out)
        z_grad, sub_grad = torch.autograd.grad(loss, [out.z, out.z_sub])
        assert (
            torch.isfinite(loss) and torch.isfinite(z_grad).all() and torch.isfinite(sub_grad).all()
        )
        assert sub_grad.abs().sum() > 0


def test_bf16_autocast_and_bf16_inputs_are_close_to_fp32() -> None:
    out = _outputs(2, 1, 32, seed=4)
    out = Outputs(
        z=out.z.float(), sample_ids=out.sample_ids, labels=out.labels, z_sub=out.z_sub.float()
    )
    for alpha in (0.0, 0.5):
        term = SelfCon(0.2, alpha=alpha)
        reference = term(out).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = term(out)
        rounded = term(
            Outputs(
                z=out.z.bfloat16().float(),
                sample_ids=out.sample_ids,
                labels=out.labels,
                z_sub=out.z_sub.bfloat16().float(),
            )
        )
        for value in (autocast, rounded):
            assert torch.isfinite(value) and value.item() == pytest.approx(reference, rel=3e-2)


# ---- the model the term asks for -----------------------------------------------------------
def _resnet18_with_exit(size: str) -> torch.nn.Module:
    criterion = build_criterion({"selfcon": {"exits": (2,), "exit_size": size}})
    exits, exit_size = criterion.exit_spec
    cfg = ModelConfig(backbone="resnet18", proj_hidden_dim=512, proj_dim=128)
    return build_model(cfg, 3, 32, criterion.requires, exits, exit_size)


def test_resnet18_fc_exit_after_stage_2_is_the_official_linear_128_to_512() -> None:
    model = _resnet18_with_exit("fc")
    linears = [m for m in model.online.exits[0].modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 512)]
    # each exit has its own projection head of the main projector's shape
    head, projector = model.online.exit_heads[0], model.online.encoder.projector
    assert head is not projector
    assert [p.shape for p in head.parameters()] == [p.shape for p in projector.parameters()]
    model.eval()
    with torch.no_grad():
        h, z, _, z_sub = model.online(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, 512) and z.shape == (2, 128) and z_sub.shape == (1, 2, 128)


def test_small_exit_has_fewer_parameters_than_same() -> None:
    def count(size: str) -> int:
        return sum(p.numel() for p in _resnet18_with_exit(size).online.exits.parameters())

    fc, small, same = count("fc"), count("small"), count("same")
    assert fc < small < same


# ---- distributed: W processes on a split batch == one process on the whole batch ----------
@pytest.mark.dist
@pytest.mark.parametrize(
    ("world", "views", "size", "kwargs"),
    [
        (2, 1, 2, {}),  # SelfCon-S, one image per rank
        (3, 2, 12, {"alpha": 0.5, "base_temperature": 0.07}),  # SelfCon-M*
        (2, 2, 12, {"supervised": False}),  # SelfCon-MU
        (3, 1, 3, {"supervised": True, "alpha": 1.0}),  # SelfCon-S*, one image per rank
    ],
)
def test_distributed_equivalence(world: int, views: int, size: int, kwargs: dict) -> None:
    assert_distributed_equivalent(
        SelfCon, {"temperature": 0.3, **kwargs}, world, views=views, size=size
    )


# ---- end to end ----------------------------------------------------------------------------
def test_single_view_fit_with_selfcon_reports_its_loss() -> None:
    recorder = Recorder()
    cfg = Config().override(
        {
            **TINY,
            "augment.views": 1,
            "loss.infonce.weight": 0,
            "loss.selfcon.weight": 1,
            "loss.selfcon.exits": [2],
        }
    )
    fit(cfg, recorder)
    assert len(recorder.epochs) == 2
    for metrics in recorder.epochs:
        assert math.isfinite(metrics["train/loss/selfcon"]) and metrics["train/loss/selfcon"] > 0
