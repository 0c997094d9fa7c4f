"""BSIM [recon]: the mixture loss against a naive loop for every base, its λ = 1 identities with
the base losses, the image maths of mixup/CutMix, and its distributed equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysl.config import Config
from raysl.losses import BSIM, InfoNCE, Outputs, Similarity
from raysl.losses.mixing import cutmix, cutmix_box, kept_fraction
from raysl.reporting import Recorder
from raysl.train import fit
from tests.conftest import TINY
from tests.losses.harness import assert_distributed_equivalent

BASES = ["infonce", "moco", "byol", "simsiam"]


# ---- the oracle: the [recon] equation with naive loops ----------------------------------------
def _unit(x: torch.Tensor) -> list[float]:
    n = math.sqrt(sum(float(a) ** 2 for a in x))
    return [float(a) / n for a in x]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _contrastive(q: list[float], keys: list[list[float]], pos: int, queue, tau: float) -> float:
    """-log e^{q·k_pos/τ} / Σ e^{q·c/τ}: over every key (queue None, in-batch), or over
    {k_pos} ∪ queue (MoCo)."""
    if queue is None:
        denom = sum(math.exp(_dot(q, k) / tau) for k in keys)
    else:
        denom = math.exp(_dot(q, keys[pos]) / tau)
        denom += sum(math.exp(_dot(q, _unit(r)) / tau) for r in queue)
    return -math.log(math.exp(_dot(q, keys[pos]) / tau) / denom)


def bsim_oracle(base: str, out: Outputs, queue: torch.Tensor | None, tau: float) -> float:
    """mean over mixtures (m, i) of λ_i·l(z_m, k_i) + (1 − λ_i)·l(z_m, k_j), j = index[i], with
    keys from view u = (m + 1) mod V:
    infonce: l = -log e^{q·k+/τ} / Σ_{c ∈ batch} e^{q·k_c/τ} (keys: online view u);
    moco:    l = -log e^{q·k+/τ} / (e^{q·k+/τ} + Σ_r e^{q·queue_r/τ}) (keys: EMA view u);
    byol/simsiam: l = ||n(p_m) − n(k+)||² (keys: EMA / online view u)."""
    views, batch = out.z.shape[:2]
    mixed = out.z_mix.shape[0]
    src = out.z if base in ("infonce", "simsiam") else out.z_target
    total = 0.0
    for m in range(mixed):
        u = (m + 1) % views
        keys = [_unit(src[u, c]) for c in range(batch)]
        for i in range(batch):
            j, lam = int(out.mix_index[i]), float(out.mix_lam[i])
            if base in ("infonce", "moco"):
                q = _unit(out.z_mix[m, i])
                bank = queue if base == "moco" else None
                l_i = _contrastive(q, keys, i, bank, tau)
                l_j = _contrastive(q, keys, j, bank, tau)
            else:
                p = _unit(out.p_mix[m, i])
                l_i = sum((a - b) ** 2 for a, b in zip(p, keys[i]))
                l_j = sum((a - b) ** 2 for a, b in zip(p, keys[j]))
            total += lam * l_i + (1 - lam) * l_j
    return total / (mixed * batch)


def _outputs(views=2, mixed=2, batch=6, dim=5, seed=0, lam=None, index=None) -> Outputs:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return Outputs(
        z=r(views, batch, dim),
        z_target=r(views, batch, dim),
        p=r(views, batch, dim),
        z_mix=r(mixed, batch, dim),
        p_mix=r(mixed, batch, dim),
        sample_ids=torch.arange(batch),
        labels=torch.arange(batch) % 3,
        mix_lam=torch.rand(batch, generator=g, dtype=torch.float64) if lam is None else lam,
        mix_index=torch.randperm(batch, generator=g) if index is None else index,
    )


def _fill(term: BSIM, rows: int, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dim, dtype = term.queue.keys.shape[1], term.queue.keys.dtype
    keys = F.normalize(torch.randn(rows, dim, generator=g, dtype=dtype), dim=1)
    term.queue.push(keys)
    return keys


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(("views", "symmetric"), [(2, True), (2, False), (3, True)])
def test_bsim_matches_the_naive_loop(base: str, views: int, symmetric: bool) -> None:
    tau = 0.3
    term = BSIM(base, temperature=tau, symmetric=symmetric, queue_size=16, dim=5).double()
    queue = _fill(term, 9) if base == "moco" else None
    # per-row λ (the loss allows it), including λ = 0 and 1, and a permutation with fixed points
    lam = torch.tensor([0.3, 1.0, 0.0, 0.55, 0.9, 0.12], dtype=torch.float64)
    index = torch.tensor([3, 1, 0, 5, 4, 2])
    out = _outputs(views=views, mixed=term.mixed_views, lam=lam, index=index)
    want = bsim_oracle(base, out, queue, tau)
    assert term(out).item() == pytest.approx(want, rel=1e-10)


# ---- identities: λ = 1 on the clean view is the base loss --------------------------------------
def _clean(out: Outputs, **kw) -> Outputs:
    """Mixture outputs replaced by the clean views' own outputs, with λ = 1."""
    batch = out.z.shape[1]
    return Outputs(
        z=out.z,
        z_target=out.z_target,
        p=out.p,
        sample_ids=out.sample_ids,
        labels=out.labels,
        z_mix=out.z,
        p_mix=out.p,
        mix_lam=torch.ones(batch, dtype=out.z.dtype),
        mix_index=torch.arange(batch - 1, -1, -1),
        **kw,
    )


@pytest.mark.parametrize(("base", "target"), [("byol", "ema"), ("simsiam", "stopgrad")])
def test_lambda_one_is_the_similarity_loss(base: str, target: str) -> None:
    out = _clean(_outputs(seed=1))
    assert BSIM(base)(out).item() == pytest.approx(Similarity(target)(out).item(), rel=1e-12)


def test_lambda_one_is_moco_with_the_same_queue() -> None:
    bsim = BSIM("moco", temperature=0.2, queue_size=20, dim=5).double()
    moco = InfoNCE(0.2, queue_size=20, dim=5).double()
    for step in range(4):  # both queues fill from the same keys: the 4th step wraps around
        out = _clean(_outputs(seed=step))
        assert bsim(out).item() == pytest.approx(moco(out).item(), rel=1e-12)
    assert step == 3 and len(bsim.queue) == 20 and int(bsim.queue.pushed) > 20
    torch.testing.assert_close(bsim.queue.keys, moco.queue.keys, rtol=0, atol=0)


def test_lambda_one_is_the_cross_view_infonce() -> None:
    """The infonce base's candidates are the other view's keys: at λ = 1 it is the cross-view
    InfoNCE (CLIP / MoCo v3 form), the mean over both directions."""
    out = _clean(_outputs(seed=2))
    z = F.normalize(out.z, dim=-1)
    target = torch.arange(z.shape[1])
    want = (
        F.cross_entropy(z[0] @ z[1].T / 0.4, target) + F.cross_entropy(z[1] @ z[0].T / 0.4, target)
    ) / 2
    assert BSIM("infonce", temperature=0.4)(out).item() == pytest.approx(want.item(), rel=1e-12)


def test_a_self_partner_is_the_unmixed_loss_for_any_lambda() -> None:
    """Pairing an image with itself (odd batch, reverse pairing: the middle row) gives
    λ·l + (1 − λ)·l = l whatever λ is."""
    out = _outputs(seed=3, batch=5, index=torch.arange(5))
    one = _outputs(seed=3, batch=5, index=torch.arange(5), lam=torch.ones(5, dtype=torch.float64))
    for base in ("infonce", "byol"):
        assert BSIM(base)(out).item() == pytest.approx(BSIM(base)(one).item(), rel=1e-12)


# ---- mixing: image maths, λ, seeds ------------------------------------------------------------
def _views(mixed=2, batch=6, side=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(mixed, batch, 3, side, side, generator=g, dtype=torch.float64) + 1.0


def test_mixup_is_pixel_exact_with_the_reversed_batch() -> None:
    views = _views()
    mixed, lam, index = BSIM(mix_op="mixup", alpha=0.7).mix(views, torch.Generator().manual_seed(1))
    assert index.tolist() == [5, 4, 3, 2, 1, 0]
    assert lam.shape == (6,) and bool((lam == lam[0]).all()) and 0 < float(lam[0]) < 1
    share = float(lam[0])
    for m in range(2):
        for i in range(6):
            want = share * views[m, i] + (1 - share) * views[m, 5 - i]
            assert torch.equal(mixed[m, i], want)


def test_cutmix_pastes_one_box_and_lambda_is_the_kept_area() -> None:
    term = BSIM(mix_op="cutmix", pairing="random")
    seen_partial = 0
    for seed in range(12):
        views = _views(side=8, seed=seed)
        # offsets keep every pixel of an image different from every pixel of another image
        views = views + torch.arange(6, dtype=torch.float64)[None, :, None, None, None] * 20
        mixed, lam, index = term.mix(views, torch.Generator().manual_seed(seed))
        assert sorted(index.tolist()) == list(range(6))
        for i in range(6):
            j = int(index[i])
            from_self = (mixed[:, i] == views[:, i]).all(dim=(0, 1))  # (H, W) over views, channels
            from_partner = (mixed[:, i] == views[:, j]).all(dim=(0, 1))
            if j == i:
                assert torch.equal(mixed[:, i], views[:, i])
                continue
            assert bool((from_self ^ from_partner).all()), "each pixel comes from one image"
            assert float(from_self.double().mean()) == pytest.approx(float(lam[i]), abs=1e-15)
            rows, cols = torch.nonzero(from_partner, as_tuple=True)
            if len(rows):  # the pasted pixels form one axis-aligned rectangle
                h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
                assert h * w == len(rows)
        seen_partial += 0 < float(lam[0]) < 1
    assert seen_partial >= 3


def test_cutmix_box_follows_rand_bbox() -> None:
    class Centre:  # a stand-in generator that puts the centre at (4, 4)
        def integers(self, high: int) -> int:
            return 4

    box = cutmix_box(8, 8, 0.75, Centre())  # sides int(8·√0.25) = 4 -> rows/cols [2, 6)
    assert box == (2, 6, 2, 6) and kept_fraction(box, 8, 8) == 0.75
    corner = cutmix_box(8, 8, 0.75, type("C", (), {"integers": lambda self, h: 0})())
    assert corner == (0, 2, 0, 2) and kept_fraction(corner, 8, 8) == 1 - 4 / 64  # clipped
    x, partner = torch.zeros(1, 8, 8), torch.ones(1, 8, 8)
    out = cutmix(x, partner, box)
    for r in range(8):
        for c in range(8):
            assert float(out[0, r, c]) == (1.0 if 2 <= r < 6 and 2 <= c < 6 else 0.0)
    empty = cutmix_box(8, 8, 1.0, np.random.default_rng(0))  # λ = 1: no box, nothing pasted
    assert kept_fraction(empty, 8, 8) == 1.0


def test_the_same_seed_gives_the_same_mixing() -> None:
    views = _views()
    for kwargs in ({"mix_op": "random", "pairing": "random"}, {"mix_op": "cutmix"}):
        term = BSIM(**kwargs)
        a = term.mix(views, torch.Generator().manual_seed(42))
        b = term.mix(views, torch.Generator().manual_seed(42))
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    lams = {float(BSIM().mix(views, torch.Generator().manual_seed(s))[1][0]) for s in range(8)}
    assert len(lams) == 8, "different seeds draw different λ"


def test_random_op_uses_both_operators() -> None:
    views = _views()
    kinds = set()
    for seed in range(16):
        mixed, _, index = BSIM(mix_op="random").mix(views, torch.Generator().manual_seed(seed))
        pure = bool(((mixed == views) | (mixed == views[:, index])).all())
        kinds.add("cutmix" if pure else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_a_batch_of_one_mixes_with_itself() -> None:
    views = _views(batch=1)
    mixed, _, index = BSIM(mix_op="mixup").mix(views, torch.Generator().manual_seed(0))
    assert index.tolist() == [0]
    torch.testing.assert_close(mixed, views)


# ---- contract, edge cases ----------------------------------------------------------------------
def test_requires_and_mixed_views_follow_the_arguments() -> None:
    assert BSIM("infonce").requires == {"z", "z_mix"}
    assert BSIM("moco", queue_size=8).requires == {"z", "z_mix", "z_target"}
    assert BSIM("byol").requires == {"z", "z_mix", "p", "z_target"}
    assert BSIM("simsiam").requires == {"z", "z_mix", "p"}
    assert BSIM(symmetric=True).mixed_views == 2 and BSIM(symmetric=False).mixed_views == 1
    assert "queue.keys" in BSIM("moco", queue_size=8).state_dict()
    assert dict(BSIM("infonce").state_dict()) == {}
    with pytest.raises(ValueError, match="queue_size"):
        BSIM("moco")
    with pytest.raises(ValueError, match="base"):
        BSIM("swav")  # type: ignore[arg-type]


def test_config_validates_the_arguments() -> None:
    cfg = Config().override({"loss.bsim.weight": 0.5, "loss.bsim.mix_op": "cutmix"})
    assert cfg.loss.bsim.mix_op == "cutmix"
    for key, bad in [("mix_op", "blend"), ("alpha", 0.0), ("pairing", "next"), ("base", "x")]:
        with pytest.raises(Exception, match=key):
            Config().override({"loss.bsim.weight": 1, f"loss.bsim.{key}": bad})


@pytest.mark.parametrize("base", BASES)
def test_extreme_lambdas_give_finite_gradients(base: str) -> None:
    term = BSIM(base, queue_size=8, dim=5)
    if base == "moco":
        _fill(term, 8)
    lam = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 1.0])
    out = _outputs(lam=lam, index=torch.tensor([5, 1, 3, 2, 4, 0]))  # self-partners too
    z_mix = out.z_mix.float().requires_grad_()
    p_mix = out.p_mix.float().requires_grad_()
    z = out.z.float().requires_grad_()
    loss = term(
        Outputs(
            z=z,
            z_target=out.z_target.float(),
            sample_ids=out.sample_ids,
            z_mix=z_mix,
            p_mix=p_mix,
            mix_lam=out.mix_lam.float(),
            mix_index=out.mix_index,
        )
    )
    loss.backward()
    grads = [t.grad for t in (z_mix, p_mix, z) if t.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)


def _cast(out: Outputs, fn) -> Outputs:
    """`fn` applied to every floating-point tensor of `out`."""
    fields = vars(out).items()
    return Outputs(
        **{k: fn(v) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in fields}
    )


@pytest.mark.parametrize("base", BASES)
def test_bf16_autocast_and_bf16_inputs_stay_close_to_fp32(base: str) -> None:
    term = BSIM(base, temperature=0.3, queue_size=64, dim=16).eval()
    if base == "moco":
        _fill(term, 64)
    out = _outputs(batch=32, dim=16, seed=6)
    f32 = _cast(out, lambda t: t.float())
    want = term(f32)
    query = "p_mix" if base in ("byol", "simsiam") else "z_mix"
    x = getattr(f32, query).clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = term(Outputs(**{**vars(f32), query: x}))
    auto.backward()
    cast = _cast(f32, lambda t: t.bfloat16().float())
    assert auto.dtype == torch.float32 and torch.isfinite(auto) and torch.isfinite(x.grad).all()
    assert auto.item() == pytest.approx(want.item(), rel=3e-2)
    assert term(cast).item() == pytest.approx(want.item(), rel=3e-2)


# ---- distributed: W processes == one process; the harness mixes each rank's shard ------------
@pytest.mark.dist
@pytest.mark.parametrize(
    ("world", "size", "kwargs"),
    [
        (2, 12, {"base": "infonce", "mix_op": "mixup"}),
        (3, 12, {"base": "infonce", "mix_op": "cutmix", "pairing": "random"}),
        (3, 12, {"base": "moco", "queue_size": 7, "dim": 4}),  # queue < a step's 24 keys
        (2, 2, {"base": "byol", "symmetric": False}),  # per-rank batch 1
        (3, 3, {"base": "simsiam", "pairing": "random", "mix_op": "random"}),
    ],
)
def test_bsim_distributed_equals_single_process(world: int, size: int, kwargs: dict) -> None:
    assert_distributed_equivalent(BSIM, {"temperature": 0.3, **kwargs}, world, size=size)


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["infonce", "byol"])
def test_bsim_trains_end_to_end(base: str) -> None:
    cfg = Config().override(
        {
            **TINY,
            "epochs": 1,
            "loss.infonce.weight": 0,
            "loss.bsim.weight": 1,
            "loss.bsim.base": base,
        }
    )
    summary = fit(cfg, Recorder())
    assert "train/loss/bsim" in summary and math.isfinite(summary["train/loss/bsim"])
    assert "train/loss/infonce" not in summary
