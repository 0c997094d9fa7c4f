"""MeanShift (BYOL / MSF / CMSF) against naive loops over methods.md §3.1-3.2, its identities,
its state across ranks, and one training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import raysl.losses.mean_shift as mean_shift_module
from raysl.losses import MeanShift, Outputs

DATASET, CLASSES = 10, 3


# ---- the oracle: MSF / CMSF with Python lists and loops ----------------------------------
def _unit(x: torch.Tensor) -> list[float]:
    norm = math.sqrt(sum(float(v) ** 2 for v in x))
    return [float(v) / norm for v in x]


def _dist(a: list[float], b: list[float]) -> float:
    return 2 - 2 * sum(x * y for x, y in zip(a, b))


class NaiveMeanShift:
    """One training step at a time, from the equations: bank = newest K targets (this step's
    included), L = beta * L_c + (1 - beta) * L_u with L = mean over the k nearest of 2 - 2 u.m."""

    def __init__(self, k, bank_size, constraint="none", k_prime=5, beta=0.5, symmetric=False):
        self.k, self.size, self.constraint = k, bank_size, constraint
        self.k_prime, self.beta, self.symmetric = k_prime, beta, symmetric
        self.bank: list[tuple[list[float], int, int]] = []  # (key, label, image), oldest first
        self.pool: dict[int, list[list[float]]] = {}  # image -> its view-0 targets, newest last

    def older(self, image: int) -> list[float] | None:
        stored = self.pool.get(image, [])
        return stored[-2] if len(stored) >= 2 else None

    def step(self, p, t, ids, labels) -> float:
        views, batch = p.shape[:2]
        if self.symmetric:
            pairs = [(v, (v + 1) % views) for v in range(views)]
        else:
            pairs = [(v, 0) for v in range(1, views)]
        pushed = sorted({tv for _, tv in pairs})
        ids, labels = [int(i) for i in ids], [int(c) for c in labels]
        if self.constraint == "2q":
            for b in range(batch):
                self.pool.setdefault(ids[b], []).append(_unit(t[0, b]))
        new = [(_unit(t[v, b]), labels[b], ids[b]) for v in pushed for b in range(batch)]
        self.bank = (self.bank + new)[-self.size :] if self.size else []
        search = self.bank if self.size >= len(new) else new
        total, count = 0.0, 0
        for qv, tv in pairs:
            for b in range(batch):
                u, v = _unit(p[qv, b]), _unit(t[tv, b])
                d = [_dist(v, key) for key, _, _ in search]
                nearest = sorted(range(len(search)), key=lambda j: d[j])[: self.k]
                l_u = sum(_dist(u, search[j][0]) for j in nearest) / len(nearest)
                if self.constraint == "none":
                    total += l_u
                    count += 1
                    continue
                allowed = self.allowed(search, labels[b], ids[b])
                ranked = sorted(range(len(search)), key=lambda j: (j not in allowed, d[j]))
                l_c = sum(_dist(u, search[j][0]) for j in ranked[: self.k]) / len(nearest)
                total += self.beta * l_c + (1 - self.beta) * l_u
                count += 1
        return total / count

    def allowed(self, search, label: int, image: int) -> set[int]:
        everything = set(range(len(search)))
        if self.constraint == "label":
            return everything if label < 0 else {j for j in everything if search[j][1] == label}
        mine = self.older(image)  # 2q: the k' nearest images in the space of older embeddings
        if mine is None:
            return everything
        images = sorted({i for _, _, i in search if self.older(i) is not None})
        images.sort(key=lambda i: _dist(mine, self.older(i)))
        return {j for j in everything if search[j][2] in images[: self.k_prime]}


def _batch(step: int, views: int = 2, batch: int = 4, dim: int = 5, dtype=torch.float64):
    """Random (p, z_target, ids, labels); ids repeat across steps, so 2q pools fill."""
    g = torch.Generator().manual_seed(step)
    p = torch.randn(views, batch, dim, generator=g, dtype=dtype)
    t = torch.randn(views, batch, dim, generator=g, dtype=dtype)
    ids = torch.randperm(DATASET, generator=g)[:batch]
    labels = ids % CLASSES
    labels[ids == 0] = -1  # one image without a label
    return p, t, ids, labels


def _out(p, t, ids, labels) -> Outputs:
    return Outputs(z=p, sample_ids=ids, labels=labels, p=p, z_target=t)


def _term(**kwargs) -> MeanShift:
    context = {"dim": 5, "num_samples": DATASET, "num_classes": CLASSES}
    return MeanShift(**{**context, **kwargs}).double()


# ---- (1) oracle ----------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("constraint", ["none", "2q", "label"])
def test_matches_the_naive_oracle(constraint: str, symmetric: bool) -> None:
    kwargs = dict(k=3, bank_size=14, constraint=constraint, k_prime=4, beta=0.3)
    term = _term(**kwargs, symmetric=symmetric, chunk=5)  # chunks, wrap-around of the bank
    oracle = NaiveMeanShift(**kwargs, symmetric=symmetric)
    for step in range(8):
        batch = _batch(step)
        assert term(_out(*batch)).item() == pytest.approx(oracle.step(*batch), rel=1e-12)
    if constraint == "2q":  # the constrained branch was exercised
        assert int(term.pool_writes.max()) >= 3


def test_oracle_with_three_views_and_a_bank_smaller_than_a_step() -> None:
    term, oracle = _term(k=2, bank_size=5, chunk=2), NaiveMeanShift(k=2, bank_size=5)
    for step in range(3):
        batch = _batch(step, views=3)
        assert term(_out(*batch)).item() == pytest.approx(oracle.step(*batch), rel=1e-12)


# ---- (2) identities --------------------------------------------------------------------------
def _byol(p: torch.Tensor, t: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """BYOL's 2 - 2 cos(p, sg(t')) (Grill et al., 2020, eq. 2), also what
    `Similarity(target="ema")` computes with the same symmetry."""
    pairs = [(0, 1), (1, 0)] if symmetric else [(1, 0)]
    return torch.stack(
        [(2 - 2 * F.cosine_similarity(p[q], t[v], dim=-1)).mean() for q, v in pairs]
    ).mean()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("constraint", ["none", "2q", "label", "pseudo_label"])
@pytest.mark.parametrize("bank_size", [0, 64])
def test_k1_is_byol(constraint: str, symmetric: bool, bank_size: int) -> None:
    term = _term(k=1, bank_size=bank_size, constraint=constraint, symmetric=symmetric)
    for step in range(4):
        p, t, ids, labels = _batch(step)
        p.requires_grad_(True)
        loss = term(_out(p, t, ids, labels))
        want = _byol(p, t, symmetric)
        assert loss.item() == pytest.approx(want.item(), rel=1e-12)
        (got_grad,) = torch.autograd.grad(loss, p)
        (want_grad,) = torch.autograd.grad(want, p)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


def test_k1_does_not_depend_on_the_bank() -> None:
    losses = []
    for history in (10, 20):  # different earlier steps, so different banks and pools
        term = _term(k=1, bank_size=50, constraint="2q")
        for step in range(history, history + 3):
            term(_out(*_batch(step)))
        losses.append(term(_out(*_batch(7))).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


def test_2q_with_k_prime_at_least_the_bank_is_msf() -> None:
    msf = _term(k=3, bank_size=40)
    cmsf = _term(k=3, bank_size=40, constraint="2q", k_prime=40, beta=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # every image in every step: all are constrained from step 2 on
        p, t = torch.randn(2, 2, DATASET, 5, generator=g, dtype=torch.float64)
        batch = (p, t, torch.randperm(DATASET, generator=g), torch.zeros(DATASET).long())
        assert cmsf(_out(*batch)).item() == pytest.approx(msf(_out(*batch)).item(), rel=1e-12)
    assert bool((cmsf.pool_writes == 5).all())


def test_beta_zero_is_msf_and_none_ignores_beta() -> None:
    msf = _term(k=3, bank_size=20)
    terms = [msf, _term(k=3, bank_size=20, constraint="label", beta=0.0), _term(k=3, beta=1.0)]
    for step in range(3):
        values = [term(_out(*_batch(step))).item() for term in terms]
        assert values[1] == pytest.approx(values[0], rel=1e-12)
        assert values[2] == pytest.approx(values[0], rel=1e-12)


@pytest.mark.parametrize("constraint", ["none", "2q", "label"])
def test_chunked_top_k_equals_unchunked(constraint: str) -> None:
    whole = _term(k=4, bank_size=30, constraint=constraint, k_prime=5, chunk=4096)
    pieces = _term(k=4, bank_size=30, constraint=constraint, k_prime=5, chunk=3)
    for step in range(5):
        p, t, ids, labels = _batch(step)
        p.requires_grad_(True)
        a, b = whole(_out(p, t, ids, labels)), pieces(_out(p, t, ids, labels))
        assert a.item() == pytest.approx(b.item(), rel=1e-13)
        torch.testing.assert_close(torch.autograd.grad(a, p), torch.autograd.grad(b, p))


def test_bank_smaller_than_a_batch_searches_the_batch() -> None:
    small, none = _term(k=3, bank_size=3, symmetric=True), _term(k=3, bank_size=0, symmetric=True)
    for step in range(3):
        batch = _batch(step)  # 2 views x 4 images = 8 targets per step > 3
        assert small(_out(*batch)).item() == pytest.approx(none(_out(*batch)).item(), rel=1e-12)
    newest = F.normalize(batch[1], dim=-1)[1, 1:]  # the newest 3 targets, in any slots
    keys = small.bank.read()[0]
    torch.testing.assert_close(keys[keys[:, 0].argsort()], newest[newest[:, 0].argsort()])


def test_label_constrained_neighbours_share_the_anchor_label(monkeypatch) -> None:
    original, calls = mean_shift_module.k_nearest, []

    def spy(*args):
        calls.append((len(args), original(*args)))
        return calls[-1][1]

    monkeypatch.setattr(mean_shift_module, "k_nearest", spy)
    k = 3
    term = _term(k=k, bank_size=24, constraint="label", chunk=7)
    checked = 0
    for step in range(5):
        calls.clear()
        p, t, ids, labels = _batch(step)
        term(_out(p, t, ids, labels))
        constrained = [result for n_args, result in calls if n_args == 5]  # with a penalty
        assert len(calls) == 2 and len(constrained) == 1
        _, index = constrained[0]
        bank_labels = term.bank.read()[1]
        for b in range(len(ids)):
            if labels[b] < 0:
                continue
            same = min(k, int((bank_labels == labels[b]).sum()))
            assert bool((bank_labels[index[b, :same]] == labels[b]).all())  # all, if >= k exist
            checked += same == k
    assert checked > 0


# ---- pseudo-labels -------------------------------------------------------------------------
def test_pseudo_labels_with_every_label_known_is_the_label_constraint() -> None:
    label = _term(k=3, bank_size=20, constraint="label")
    pseudo = _term(k=3, bank_size=20, constraint="pseudo_label", label_fraction=1.0)
    for step in range(4):
        batch = _batch(step)
        assert pseudo(_out(*batch)).item() == pytest.approx(label(_out(*batch)).item(), rel=1e-12)
    torch.testing.assert_close(pseudo.bank.read()[1], label.bank.read()[1])


def test_pseudo_labels_below_the_threshold_are_unconstrained() -> None:
    msf = _term(k=3, bank_size=20)
    pseudo = _term(
        k=3, bank_size=20, constraint="pseudo_label", label_fraction=0.0, conf_threshold=1.0
    )
    for step in range(3):
        batch = _batch(step)
        assert pseudo(_out(*batch)).item() == pytest.approx(msf(_out(*batch)).item(), rel=1e-12)
    assert bool((pseudo.bank.read()[1] == -1).all())


def test_pseudo_labeler_learns_from_the_labelled_rows_only() -> None:
    kwargs = dict(constraint="pseudo_label", label_fraction=0.5, conf_threshold=0.375)
    term = _term(k=3, bank_size=20, **kwargs)
    p, t, ids, labels = _batch(0, batch=8)
    mlp = term.pseudo_labeler
    logits = mlp(F.normalize(t[0], dim=-1))
    probs = logits.softmax(dim=1)
    known = term.labelled[ids] & (labels >= 0)
    confident = probs.max(dim=1).values >= 0.375
    expected = torch.where(known, labels, torch.where(confident, probs.argmax(dim=1), -1))
    want = F.cross_entropy(logits[known], labels[known])
    want_grads = torch.autograd.grad(want, list(mlp.parameters()))

    loss = term(_out(p, t, ids, labels))
    torch.testing.assert_close(term.bank.read()[1], expected)
    assert known.any() and (expected == -1).any() and (confident & ~known).any()
    grads = torch.autograd.grad(loss, list(mlp.parameters()))
    for got, want_grad in zip(grads, want_grads):
        torch.testing.assert_close(got, want_grad)
    # the value is the mean-shift loss alone
    again = _term(k=3, bank_size=20, constraint="label")
    assert loss.item() == pytest.approx(again(_out(p, t, ids, expected)).item(), rel=1e-12)


# ---- (4) edge cases ---------------------------------------------------------------------------
def test_anchors_without_constraint_or_enough_neighbours_are_finite() -> None:
    term = _term(k=20, bank_size=6, constraint="label")  # k > every search set
    p, t, ids, _ = _batch(0)
    p.requires_grad_(True)
    loss = term(_out(p, t, ids, torch.full_like(ids, -1)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_bf16_autocast_and_bf16_inputs_match_fp32() -> None:
    p, t, ids, labels = _batch(0, dtype=torch.float32)
    reference = MeanShift(k=2, bank_size=16, constraint="2q", dim=5, num_samples=DATASET)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    want = reference(_out(p, t, ids, labels))

    autocast = MeanShift(k=2, bank_size=16, constraint="2q", dim=5, num_samples=DATASET)
    autocast.load_state_dict(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = autocast(_out(p, t, ids, labels))
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), rel=1e-6)

    low = MeanShift(k=2, bank_size=16, constraint="2q", dim=5, num_samples=DATASET)
    low.load_state_dict(state)
    cast = low(_out(p.bfloat16(), t.bfloat16(), ids, labels))
    assert torch.isfinite(cast) and cast.item() == pytest.approx(want.item(), rel=2e-2)


def test_eval_mode_leaves_the_state_alone_and_state_round_trips() -> None:
    term = _term(k=3, bank_size=20, constraint="2q")
    for step in range(3):
        term(_out(*_batch(step)))
    state = {k: v.clone() for k, v in term.state_dict().items()}
    assert {"bank.keys", "bank.index", "pool", "pool_writes"} <= set(state)
    term.eval()
    evaluated = term(_out(*_batch(3)))
    for key, value in term.state_dict().items():
        torch.testing.assert_close(value, state[key])
    resumed = _term(k=3, bank_size=20, constraint="2q")
    resumed.load_state_dict(state)
    term.train()
    assert resumed(_out(*_batch(3))).item() == pytest.approx(evaluated.item(), rel=1e-12)
    assert term(_out(*_batch(3))).item() == pytest.approx(evaluated.item(), rel=1e-12)


def test_config_rejects_bad_values_and_asks_for_labels() -> None:
    from raysl.config import Config
    from raysl.errors import ConfigError

    for key, value in [("k", 0), ("constraint", "kmeans"), ("beta", 1.5), ("bank_size", -1)]:
        with pytest.raises(ConfigError):
            Config().override({"loss.mean_shift.weight": 1, f"loss.mean_shift.{key}": value})
    assert _term(constraint="label").requires == {"p", "z_target", "labels"}
    assert _term(constraint="2q").requires == {"p", "z_target"}
    with pytest.raises(ValueError, match="num_samples"):
        MeanShift(constraint="2q")


def test_falls_under_sgd_on_the_predictions() -> None:
    term = _term(k=5, bank_size=40, constraint="2q", symmetric=True)
    _, t, ids, labels = _batch(0, batch=8)
    p = torch.randn(2, 8, 5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([p], lr=2.0)
    losses = []
    for _ in range(20):
        loss = term(_out(p, t, ids, labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---- (3) distributed ---------------------------------------------------------------------
HARNESS = {"dim": 4, "num_samples": 60, "num_classes": 3}  # tests/losses/harness.py's model


@pytest.mark.dist
@pytest.mark.parametrize(
    ("world", "size", "kwargs"),
    [
        (2, 12, {"constraint": "2q", "symmetric": True, "bank_size": 30, "k_prime": 6}),
        (3, 12, {"constraint": "pseudo_label", "label_fraction": 0.5, "conf_threshold": 0.4}),
        (2, 2, {"constraint": "label", "bank_size": 5}),  # per-rank batch 1
        (3, 3, {"constraint": "2q", "bank_size": 7, "k_prime": 3}),  # per-rank batch 1
    ],
    ids=["2q-sym-w2", "pseudo-w3", "label-w2-b1", "2q-w3-b1"],
)
def test_distributed_equals_one_process(world: int, size: int, kwargs: dict) -> None:
    from tests.losses.harness import assert_distributed_equivalent, run_steps

    kwargs = {"k": 3, "bank_size": 16, "chunk": 5, **HARNESS, **kwargs}
    steps = 6
    if kwargs["constraint"] == "2q":  # images come back, so constrained anchors exist
        record = run_steps(MeanShift, kwargs, 0, 1, world, steps, 2, size)
        assert int(record["state"]["pool_writes"].max()) >= 2
    assert_distributed_equivalent(MeanShift, kwargs, world, steps=steps, size=size)


# ---- (5) end to end --------------------------------------------------------------------------
def test_fit_trains_cmsf_on_the_tiny_config() -> None:
    from raysl.config import Config
    from raysl.reporting import Recorder
    from raysl.train import fit
    from tests.conftest import TINY

    cfg = Config().override(
        {
            **TINY,
            "epochs": 1,
            "augment.preset": "weak_strong",
            "loss.infonce.weight": 0,
            "loss.mean_shift.weight": 1,
            "loss.mean_shift.constraint": "2q",
            "loss.mean_shift.bank_size": 128,
            "loss.mean_shift.k": 3,
        }
    )
    recorder = Recorder()
    fit(cfg, recorder)
    value = recorder.epochs[-1]["train/loss/mean_shift"]
    assert math.isfinite(value) and 0 < value < 4
