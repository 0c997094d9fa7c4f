"""SupCon against a naive loop over Khosla et al.'s eq. 2 (L^sup_out), its identities, and its
distributed equivalence (including ranks whose anchors have no positive)."""

from __future__ import annotations

import math

import pytest
import torch

from raysl.config import Config
from raysl.losses import InfoNCE, Outputs, SupCon
from raysl.reporting import Recorder
from raysl.train import fit
from tests.conftest import TINY
from tests.losses.harness import assert_distributed_equivalent


def supcon_oracle(
    z: torch.Tensor,
    labels: list[int],
    temperature: float,
    base_temperature: float | None = None,
    no_positive: str = "exclude",
) -> torch.Tensor:
    """Eq. 2: L = Σ_i -1/|P(i)| Σ_{p∈P(i)} log exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ),

    A(i) = every view but i, P(i) = the views in A(i) with i's label. "exclude": averaged over
    the anchors with P(i) non-empty (PML, SelfCon supcon_s); "count": an anchor with P(i)
    empty has loss 0 and the mean is over all anchors (SupContrast's divisor set to 1).
    Optionally times τ / base_τ (SupContrast's factor). A differentiable scalar.
    """
    views, batch, dim = z.shape
    rows = [z[k // batch, k % batch] for k in range(views * batch)]  # view-major
    flat = [r / torch.sqrt(sum(r[d] ** 2 for d in range(dim))) for r in rows]
    label = [labels[k % batch] for k in range(views * batch)]
    n = len(flat)

    def sim(i: int, j: int) -> torch.Tensor:
        return sum(flat[i][d] * flat[j][d] for d in range(dim)) / temperature

    total, count = z.new_zeros(()), 0
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if label[p] == label[i]]
        if not positives:
            count += no_positive == "count"  # SupContrast: 0 / 1 = 0, counted in the mean
            continue
        log_denominator = torch.log(sum(torch.exp(sim(i, a)) for a in others))
        total = total - sum(sim(i, p) - log_denominator for p in positives) / len(positives)
        count += 1
    loss = total / count if count else total
    return loss * (temperature / base_temperature if base_temperature else 1.0)


@pytest.mark.parametrize(
    ("views", "labels"),
    [
        (2, [0, 1, 0, 2, 1, 0]),
        (3, [1, 1, 1, 0, 0, 2]),
        (1, [0, 1, 1, 2, 0, 3]),  # one view: the anchors of labels 2 and 3 have no positive
    ],
)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_the_paper(views: int, labels: list[int], temperature: float) -> None:
    torch.manual_seed(0)
    z = torch.randn(views, len(labels), 5, dtype=torch.float64)
    out = Outputs(z=z, sample_ids=torch.arange(len(labels)), labels=torch.tensor(labels))
    assert SupCon(temperature)(out).item() == pytest.approx(
        supcon_oracle(z, labels, temperature).item(), rel=1e-10
    )


def test_base_temperature_is_supcontrasts_factor_and_off_by_default() -> None:
    torch.manual_seed(1)
    z = torch.randn(2, 6, 5, dtype=torch.float64)
    labels = [0, 1, 0, 2, 1, 0]
    out = Outputs(z=z, sample_ids=torch.arange(6), labels=torch.tensor(labels))
    scaled = SupCon(0.1, base_temperature=0.07)(out).item()
    assert scaled == pytest.approx(supcon_oracle(z, labels, 0.1, 0.07).item(), rel=1e-10)
    assert scaled == pytest.approx(SupCon(0.1)(out).item() * 0.1 / 0.07, rel=1e-12)


@pytest.mark.parametrize("no_positive", ["exclude", "count"])
@pytest.mark.parametrize(
    ("views", "labels"),
    [
        (1, [0, 1, 1, 2, 0, 3, 4, 0]),  # labels 2, 3 and 4: three anchors without a positive
        (2, [0, 1, 0, 2, 1, 0]),  # every anchor has one: both settings agree
    ],
)
def test_no_positive_settings_match_their_libraries(
    views: int, labels: list[int], no_positive: str
) -> None:
    """Value and gradient against the loop, float64, 1e-9: "exclude" (PML / SelfCon) and
    "count" (SupContrast), also with SupContrast's base-temperature factor."""
    torch.manual_seed(7)
    z = torch.randn(views, len(labels), 5, dtype=torch.float64, requires_grad=True)
    out = Outputs(z=z, sample_ids=torch.arange(len(labels)), labels=torch.tensor(labels))
    term = SupCon(0.2, base_temperature=0.07, no_positive=no_positive)
    got = term(out)
    (grad,) = torch.autograd.grad(got, z)
    want = supcon_oracle(z, labels, 0.2, 0.07, no_positive)
    (want_grad,) = torch.autograd.grad(want, z)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_count_is_exclude_times_the_share_of_anchors_with_a_positive() -> None:
    """The issue's case: 2 of 16 anchors without a positive -> SupContrast = PML x 14/16."""
    torch.manual_seed(8)
    z = torch.randn(1, 16, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3] * 3 + [0, 1, 8, 9])  # labels 8 and 9 occur once
    out = Outputs(z=z, sample_ids=torch.arange(16), labels=labels)
    exclude, count = SupCon(0.1)(out), SupCon(0.1, no_positive="count")(out)
    (g_exclude,) = torch.autograd.grad(exclude, z)
    (g_count,) = torch.autograd.grad(count, z)
    assert count.item() == pytest.approx(exclude.item() * 14 / 16, rel=1e-12)
    torch.testing.assert_close(g_count, g_exclude * 14 / 16, rtol=1e-12, atol=1e-15)
    assert SupCon(0.1).no_positive == "exclude"  # the default
    with pytest.raises(ValueError, match="no_positive"):
        SupCon(0.1, no_positive="skip")  # type: ignore[arg-type]


@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_with_distinct_labels_is_infonce(views: int) -> None:
    torch.manual_seed(2)
    z = torch.randn(views, 8, 16)
    out = Outputs(z=z, sample_ids=torch.arange(8), labels=torch.randperm(8) + 10)
    assert SupCon(0.2)(out).item() == pytest.approx(InfoNCE(0.2)(out).item(), rel=1e-6)


def test_supcon_is_invariant_to_batch_order() -> None:
    torch.manual_seed(3)
    z, labels, perm = torch.randn(2, 10, 4), torch.randint(0, 3, (10,)), torch.randperm(10)
    loss = SupCon(0.2)(Outputs(z=z, sample_ids=torch.arange(10), labels=labels))
    permuted = SupCon(0.2)(Outputs(z=z[:, perm], sample_ids=torch.arange(10), labels=labels[perm]))
    assert loss.item() == pytest.approx(permuted.item(), rel=1e-6)


def test_supcon_falls_under_sgd_on_the_embeddings() -> None:
    torch.manual_seed(4)
    z = torch.randn(2, 16, 8, requires_grad=True)
    labels = torch.arange(16) % 4
    optimizer = torch.optim.SGD([z], lr=5.0)
    losses = []
    for _ in range(20):
        loss = SupCon(0.2)(Outputs(z=z, sample_ids=torch.arange(16), labels=labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    floor = math.log(7)  # 7 positives per anchor: the loss is >= log |P(i)|
    assert losses[-1] - floor < 0.2 * (losses[0] - floor)


# ---- edge cases ----------------------------------------------------------------------------
def test_anchors_without_positive_give_no_nan() -> None:
    torch.manual_seed(5)
    z = torch.randn(1, 6, 4, requires_grad=True)
    some = SupCon(0.1)(
        Outputs(z=z, sample_ids=torch.arange(6), labels=torch.tensor([0, 0, 1, 2, 3, 4]))
    )
    some.backward()
    assert torch.isfinite(some) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    z.grad = None
    none = SupCon(0.1)(Outputs(z=z, sample_ids=torch.arange(6), labels=torch.arange(6)))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(z.grad).all()


def test_bf16_autocast_and_bf16_inputs_are_close_to_fp32() -> None:
    torch.manual_seed(6)
    z = torch.randn(2, 32, 16)
    labels = torch.randint(0, 4, (32,))
    out = Outputs(z=z, sample_ids=torch.arange(32), labels=labels)
    reference = SupCon(0.2)(out).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = SupCon(0.2)(out)
    rounded = SupCon(0.2)(Outputs(z=z.bfloat16().float(), sample_ids=out.sample_ids, labels=labels))
    for value in (autocast, rounded):
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(reference, rel=3e-2)


# ---- distributed: W processes on a split batch == one process on the whole batch ----------
@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_equivalence(world: int) -> None:
    assert_distributed_equivalent(SupCon, {"temperature": 0.3, "base_temperature": 0.07}, world)


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("no_positive", ["exclude", "count"])
def test_distributed_single_view_with_one_image_per_rank(world: int, no_positive: str) -> None:
    # V=1, one image per rank, 3 classes: some ranks' anchors have no positive, so the
    # global mean must count anchors over all ranks (a per-rank mean would not match).
    kwargs = {"temperature": 0.3, "no_positive": no_positive}
    assert_distributed_equivalent(SupCon, kwargs, world, views=1, size=world)


# ---- end to end ----------------------------------------------------------------------------
def test_fit_with_supcon_reports_its_loss() -> None:
    recorder = Recorder()
    cfg = Config().override({**TINY, "loss.infonce.weight": 0, "loss.supcon.weight": 1})
    fit(cfg, recorder)
    assert len(recorder.epochs) == 2
    for metrics in recorder.epochs:
        assert math.isfinite(metrics["train/loss/supcon"]) and metrics["train/loss/supcon"] > 0
