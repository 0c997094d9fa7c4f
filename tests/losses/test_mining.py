"""Mining [recon] against naive loops over its equations, its identities with InfoNCE, its
edge cases and its distributed equivalence (queue included)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysl.config import Config
from raysl.errors import ConfigError
from raysl.losses import InfoNCE, Mining, Outputs
from raysl.losses.mining import _masked_quantile

OPEN = {"delta_lo": 2.0, "delta_hi": 2.0}  # every cosine lies within 2 of s+


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's / torch's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below, above = math.floor(position), math.ceil(position)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def mining_oracle(z: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor, **kw) -> float:
    """The [recon] loss of raysl/losses/mining.py, one anchor and one column at a time.

    z: (V, B, D) embeddings (unnormalised), ids: (B,), keys: (K, D) unit queue rows.
    """
    tau, gamma = kw["temperature"], kw["gamma"]
    views, batch, _ = z.shape
    flat = F.normalize(z.reshape(views * batch, -1), dim=1)
    n = len(flat)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b)

    losses = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        aug = [j for j in others if ids[j % batch] == ids[i % batch]]
        # mined positives: k nearest queue rows, soft weights x hard gate, renormalised
        scored = sorted(((cos(flat[i], keys[r]), r) for r in range(len(keys))), key=lambda t: -t[0])
        nbrs = scored[: min(kw["k_pos"], len(keys))]
        soft = [math.exp(s / kw["tau_w"]) for s, _ in nbrs]
        soft = [x / sum(soft) for x in soft]
        if kw["hard"] == "threshold":
            gate = [s >= kw["s_hard"] for s, _ in nbrs]
        else:
            gate = [rank < kw["top_r"] for rank in range(len(nbrs))]
        w = [x * g for x, g in zip(soft, gate)]
        total = sum(w)
        w = [x / total for x in w] if total > 0 else [0.0] * len(w)
        mined = [(s, (1 - gamma) * x) for (s, _), x in zip(nbrs, w) if (1 - gamma) * x > 0]
        aug_weight = (gamma if mined else 1.0) / max(len(aug), 1)
        positives = [(cos(flat[i], flat[j]), aug_weight) for j in aug] + mined
        if not any(weight > 0 for _, weight in positives):
            continue  # an anchor without positive drops out of the mean
        if aug:
            s_pos = sum(cos(flat[i], flat[j]) for j in aug) / len(aug)
        else:
            s_pos = sum(s * x for s, x in mined) / sum(x for _, x in mined)
        # negatives: other images' views (and the queue minus the k nearest), inside the band
        candidates = [cos(flat[i], flat[j]) for j in others if j not in aug]
        if kw["queue_negatives"]:
            nearest = {r for _, r in nbrs}
            candidates += [cos(flat[i], keys[r]) for r in range(len(keys)) if r not in nearest]
        if kw["band"] == "delta":
            lo, hi = s_pos - kw["delta_lo"], s_pos + kw["delta_hi"]
        else:
            lo, hi = _quantile(candidates, kw["q_lo"]), _quantile(candidates, kw["q_hi"])
        kept = [s for s in candidates if lo <= s <= hi]
        denominator = sum(math.exp(s / tau) for s, _ in positives) + sum(
            math.exp(s / tau) for s in kept
        )
        mean_log = sum(x * (s / tau - math.log(denominator)) for s, x in positives)
        losses.append(-mean_log / sum(x for _, x in positives))
    return sum(losses) / len(losses)


def _data(views: int, batch: int = 6, dim: int = 5, queue: int = 10, seed: int = 0):
    """Correlated views (s+ well above the negatives) and a queue with near neighbours."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    z = base + 0.6 * torch.randn(views, batch, dim, generator=g, dtype=torch.float64)
    near = base[: queue // 2] + 0.7 * torch.randn(queue // 2, dim, generator=g, dtype=torch.float64)
    far = torch.randn(queue - queue // 2, dim, generator=g, dtype=torch.float64)
    keys = F.normalize(torch.cat([near, far]), dim=1)
    return z, torch.arange(batch) * 7 % 13, keys


def _term(keys: torch.Tensor | None = None, **kw) -> Mining:
    term = Mining(**{"dim": 5, "warmup_epochs": 0.0, "queue_size": 16, **kw}).double()
    if keys is not None:
        term.queue.push(keys)
    return term


def _settings(term: Mining) -> dict:
    names = ("temperature", "gamma", "k_pos", "tau_w", "hard", "s_hard", "top_r", "band")
    extra = ("delta_lo", "delta_hi", "q_lo", "q_hi", "queue_negatives")
    return {name: getattr(term, name) for name in names + extra}


CASES = {
    "delta-threshold": {"views": 2, "s_hard": 0.3, "delta_lo": 0.9, "delta_hi": 0.05},
    "quantile-top_r-queue": {
        "views": 3,
        "hard": "top_r",
        "top_r": 2,
        "k_pos": 4,
        "gamma": 0.3,
        "band": "quantile",
        "q_lo": 0.3,
        "q_hi": 0.8,
        "queue_negatives": True,
        "temperature": 0.2,
    },
    "gamma0-strict-gate": {"views": 2, "gamma": 0.0, "s_hard": 0.7, "delta_lo": 0.6, "tau_w": 0.5},
    "one-view-queue-negatives": {
        "views": 1,
        "band": "quantile",
        "q_lo": 0.1,
        "q_hi": 0.95,
        "s_hard": 0.5,
        "queue_negatives": True,
    },
    "delta-queue-negatives": {"views": 2, "queue_negatives": True, "delta_lo": 0.5, "k_pos": 2},
    "one-view-delta": {"views": 1, "s_hard": 0.5, "delta_lo": 0.4, "delta_hi": 0.1},
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_mining_matches_the_naive_loop(case: str) -> None:
    kw = dict(CASES[case])
    views = kw.pop("views")
    z, ids, keys = _data(views)
    term = _term(keys, **kw)
    loss = term(Outputs(z=z, sample_ids=ids, epoch=3.0))
    assert loss.item() == pytest.approx(mining_oracle(z, ids, keys, **_settings(term)), rel=1e-10)
    # the case exercises what it names: some mined positives, some dropped negatives
    _, weights, valid = term.pairs(Outputs(z=z, sample_ids=ids, epoch=3.0))
    m = views * len(ids)
    mined = weights[:, m : m + min(term.k_pos, 10)]
    assert (mined > 0).any()
    assert (valid[:, :m].sum(dim=1) < m - 1).any()  # m - 1: every column but the anchor


def test_soft_and_hard_weights_by_hand() -> None:
    """Anchor at angle 0, neighbours at cosines 0.9, 0.6, 0.2: the gate and softmax by hand."""
    angles = torch.tensor([math.acos(0.9), math.acos(0.6), math.acos(0.2)], dtype=torch.float64)
    keys = torch.stack([angles.cos(), angles.sin()], dim=1)  # (3, 2)
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.05], [0.05, 1.0]]], dtype=torch.float64)
    out = Outputs(z=z, sample_ids=torch.arange(2), epoch=1.0)
    e9, e6 = (math.exp(c / 0.25) for c in (0.9, 0.6))
    gated = [e9 / (e9 + e6), e6 / (e9 + e6), 0.0]  # threshold 0.5 drops the 0.2 neighbour
    term = Mining(dim=2, warmup_epochs=0, k_pos=3, tau_w=0.25, s_hard=0.5, gamma=0.4).double()
    term.queue.push(keys)
    _, weights, _ = term.pairs(out)
    torch.testing.assert_close(weights[0, 4:], 0.6 * torch.tensor(gated, dtype=torch.float64))
    assert weights[0, 2].item() == pytest.approx(0.4)  # the other view keeps γ
    term = Mining(dim=2, warmup_epochs=0, k_pos=3, tau_w=0.25, hard="top_r", top_r=1).double()
    term.queue.push(keys)
    _, weights, valid = term.pairs(out)
    assert weights[0, 4:].tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert valid[0, 4:].tolist() == [True, False, False]  # gated-out neighbours leave Z too


# ---- identities --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {"k_pos": 0, **OPEN},
        {"gamma": 1.0, **OPEN},
        {"band": "quantile", "q_lo": 0.0, "q_hi": 1.0, "k_pos": 0},
        {"gamma": 1.0, "band": "quantile", "q_lo": 0.0, "q_hi": 1.0},
    ],
)
@pytest.mark.parametrize("views", [2, 3])
def test_open_band_without_mined_positives_is_infonce(kw: dict, views: int) -> None:
    z, ids, keys = _data(views)
    out = Outputs(z=z, sample_ids=ids, epoch=50.0)
    want = InfoNCE(0.3)(out).item()
    assert _term(keys, temperature=0.3, **kw)(out).item() == pytest.approx(want, rel=1e-12)
    assert _term(None, temperature=0.3, **OPEN)(out).item() == pytest.approx(want, rel=1e-12)


def test_band_closed_around_the_positive_keeps_only_positives() -> None:
    z, ids, _ = _data(2)
    z.requires_grad_(True)
    term = _term(None, delta_lo=0.0, delta_hi=0.0)
    out = Outputs(z=z, sample_ids=ids, epoch=1.0)
    _, weights, valid = term.pairs(out)
    assert torch.equal(valid, weights > 0)
    loss = term(out)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(z.grad).all()


def test_warmup_is_infonce_and_fills_the_queue() -> None:
    z, ids, keys = _data(2)
    term = _term(keys, warmup_epochs=2.0, delta_lo=0.0, delta_hi=0.0, s_hard=-1.0)
    for epoch in (0.0, 1.99):
        out = Outputs(z=z, sample_ids=ids, epoch=epoch)
        assert term(out).item() == pytest.approx(InfoNCE(0.5)(out).item(), rel=1e-12)
    assert int(term.queue.pushed) == 10 + 2 * 6 and len(term.queue) == 16
    mined = term(Outputs(z=z, sample_ids=ids, epoch=2.0))
    assert mined.item() != pytest.approx(InfoNCE(0.5)(out).item(), rel=1e-3)


def test_mined_positives_are_never_negatives() -> None:
    z, ids, keys = _data(2, queue=12)
    term = _term(keys, queue_negatives=True, k_pos=4, s_hard=0.9, **OPEN)
    _, weights, valid = term.pairs(Outputs(z=z, sample_ids=ids))  # epoch 0 = warmup 0: mining
    m, k = 12, 4
    anchors = F.normalize(z.flatten(0, 1), dim=1)
    nearest = (anchors @ keys.T).topk(k, dim=1).indices  # (N, k)
    queue_valid = valid[:, m + k :]
    assert not queue_valid.gather(1, nearest).any()  # none of the k nearest is a negative
    assert queue_valid.sum(1).eq(12 - k).all()  # every other queue row is (band open)
    assert torch.equal(valid[:, m : m + k], weights[:, m : m + k] > 0)
    assert not (weights[:, m + k :] > 0).any()


def test_quantile_band_keeps_the_expected_count() -> None:
    z, ids, keys = _data(2, batch=8)
    for q_lo, q_hi in [(0.25, 0.75), (0.1, 0.9), (0.5, 0.5), (0.0, 1.0), (0.33, 0.71)]:
        term = _term(keys, band="quantile", q_lo=q_lo, q_hi=q_hi, k_pos=0)
        _, _, valid = term.pairs(Outputs(z=z, sample_ids=ids))
        n = 16 - 2  # candidates per anchor: all columns but itself and its other view
        expected = math.floor(q_hi * (n - 1) + 1e-9) - math.ceil(q_lo * (n - 1) - 1e-9) + 1
        assert valid.sum(dim=1).tolist() == [expected + 1] * 16, (q_lo, q_hi)  # + the positive


def test_chunked_neighbour_search_equals_the_full_one(monkeypatch: pytest.MonkeyPatch) -> None:
    z, ids, keys = _data(2, batch=12, queue=23)
    term = _term(keys, queue_size=32, k_pos=4, s_hard=0.2, queue_negatives=True)
    out = Outputs(z=z, sample_ids=ids)
    whole = term.pairs(out)
    monkeypatch.setattr("raysl.losses.mining._CHUNK", 5)  # 23 rows in chunks of 5
    for got, want in zip(term.pairs(out), whole):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_masked_quantile_equals_torch_quantile() -> None:
    values = torch.randn(5, 9, dtype=torch.float64)
    mask = torch.ones_like(values, dtype=torch.bool)
    mask[1, :4] = False
    mask[2] = False
    for q in (0.0, 0.13, 0.5, 0.875, 1.0):
        got = _masked_quantile(values, mask, q)
        torch.testing.assert_close(got[[0, 3, 4]], values[[0, 3, 4]].quantile(q, dim=1))
        assert got[1].item() == pytest.approx(values[1, 4:].quantile(q).item())
        assert got[2].item() == 0.0  # no candidate: no threshold, no NaN


# ---- edge cases ---------------------------------------------------------------------------
def test_no_nan_when_every_negative_is_filtered_out() -> None:
    z, ids, keys = _data(1)  # one view: positives are mined or nothing
    z.requires_grad_(True)
    for keys_, s_hard in [(keys, 0.5), (keys, 1.0), (None, 0.5)]:
        term = _term(keys_, delta_lo=0.0, delta_hi=0.0, s_hard=s_hard)
        loss = term(Outputs(z=z, sample_ids=ids))
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == 0.0  # no queue, one view: no anchor has a positive


def test_queue_smaller_than_a_batch() -> None:
    z, ids, _ = _data(2, batch=8)
    term = _term(None, queue_size=4, k_pos=6, s_hard=-1.0)
    term(Outputs(z=z, sample_ids=ids))
    keys, index = (t.clone() for t in term.queue.read()[::2])
    assert sorted(index.tolist()) == sorted(ids[4:].tolist())  # the newest 4 of view 0
    order = [ids.tolist().index(i) for i in index.tolist()]
    torch.testing.assert_close(keys, F.normalize(z[0, order], dim=1))
    z2, _, _ = _data(2, batch=8, seed=1)
    loss = term(Outputs(z=z2, sample_ids=ids))
    assert loss.item() == pytest.approx(mining_oracle(z2, ids, keys, **_settings(term)), rel=1e-10)


def test_queue_is_in_the_state_dict() -> None:
    z, ids, keys = _data(2)
    term = _term(keys)
    state = term.state_dict()
    assert {"queue.keys", "queue.labels", "queue.index", "queue.pushed"} <= set(state)
    restored = _term(None)
    restored.load_state_dict(state)
    out = Outputs(z=z, sample_ids=ids)
    assert restored(out).item() == term(out).item()


def test_bf16_autocast_and_bf16_inputs() -> None:
    z, ids, keys = _data(2, batch=16)
    z, keys = z.float(), keys.float()
    term = Mining(dim=5, warmup_epochs=0, queue_size=16, s_hard=0.3, delta_lo=0.9)
    term.queue.push(keys)
    term.eval()  # keep the queue fixed between the three calls
    fp32 = term(Outputs(z=z, sample_ids=ids))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = term(Outputs(z=z.clone().requires_grad_(True), sample_ids=ids))
    assert autocast.dtype == torch.float32
    assert autocast.item() == pytest.approx(fp32.item(), rel=1e-6)  # selection in fp32
    z16 = z.bfloat16().requires_grad_(True)
    loss16 = term(Outputs(z=z16, sample_ids=ids))
    loss16.backward()
    assert torch.isfinite(loss16) and torch.isfinite(z16.grad.float()).all()
    assert loss16.item() == pytest.approx(fp32.item(), rel=3e-2)


def test_bad_values_are_rejected_by_the_config() -> None:
    base = {"loss.infonce.weight": 0, "loss.mining.weight": 1}
    for key, value in [("hard", "soft"), ("band", "both"), ("temperature", 0), ("s_hard", 1.5)]:
        with pytest.raises(ConfigError, match="mining"):
            Config().override({**base, f"loss.mining.{key}": value})
    with pytest.raises(ValueError, match="q_lo"):
        Mining(q_lo=0.9, q_hi=0.5)


# ---- distributed: W processes == one process on the global batch, queue included --------
DIST = {
    "dim": 4,
    "temperature": 0.3,
    "warmup_epochs": 1.0,  # the harness's epoch is its step: step 0 warms up and fills
    "queue_size": 20,  # < 3 steps x 12 images: the FIFO wraps
    "k_pos": 3,
    "s_hard": 0.0,
    "delta_lo": 0.6,
    "delta_hi": 0.05,
}
DIST_QUANTILE = {
    **DIST,
    "band": "quantile",
    "q_lo": 0.3,
    "q_hi": 0.9,
    "hard": "top_r",
    "queue_negatives": True,
}


def test_the_distributed_settings_mine_and_filter() -> None:
    """The harness's data and model give mined positives and dropped negatives (so the
    distributed tests below test mining, not plain InfoNCE)."""
    from tests.losses.harness import Tiny, global_batch

    model = Tiny().double()
    for kw in (DIST, DIST_QUANTILE):
        term = Mining(**kw).double()
        for step in range(2):
            views, ids, labels = global_batch(step, 2, 12)
            z = model(views.flatten(0, 1))[1].view(2, 12, -1)
            out = Outputs(z=z, sample_ids=ids, labels=labels, epoch=float(step))
            if step == 1:
                _, weights, valid = term.pairs(out)
                assert (weights[:, 24:] > 0).any(), kw
                assert (valid[:, :24].sum(dim=1) < 23).any(), kw
            term(out)


@pytest.mark.dist
@pytest.mark.parametrize("world, kw", [(2, DIST), (3, DIST_QUANTILE)], ids=["W2", "W3"])
def test_distributed_equals_single_process(world: int, kw: dict) -> None:
    from tests.losses.harness import assert_distributed_equivalent

    assert_distributed_equivalent(Mining, kw, world, steps=3)


@pytest.mark.dist
@pytest.mark.parametrize("world, kw", [(2, DIST_QUANTILE), (3, DIST)], ids=["W2", "W3"])
def test_distributed_with_one_image_per_rank(world: int, kw: dict) -> None:
    from tests.losses.harness import assert_distributed_equivalent

    assert_distributed_equivalent(Mining, {**kw, "queue_size": 4}, world, steps=3, size=world)


# ---- end to end ---------------------------------------------------------------------------
def test_fit_with_mining_reports_its_loss() -> None:
    from raysl.reporting import Recorder
    from raysl.train import fit
    from tests.conftest import TINY

    cfg = Config().override(
        {
            **TINY,
            "loss.infonce.weight": 0,
            "loss.mining.weight": 1,
            "loss.mining.warmup_epochs": 1,
            "loss.mining.queue_size": 128,
            "loss.mining.s_hard": 0.0,
        }
    )
    recorder = Recorder()
    fit(cfg, recorder)
    assert [m["epoch"] for m in recorder.epochs] == [1.0, 2.0]
    for metrics in recorder.epochs:
        assert math.isfinite(metrics["train/loss/mining"])
