"""The loss-term contract: weights, schedules, dropping terms and the branches they need."""

from __future__ import annotations

import pytest
import torch

from raysl.config import ModelConfig
from raysl.losses import LOSSES, Criterion, LossTerm, Outputs, WeightSchedule, build_criterion
from raysl.models import build_model


class _NeedsPredictor(LossTerm):
    """A stand-in term that reads the predictor and the EMA target (like BYOL)."""

    requires = frozenset({"p", "z_target"})

    def __init__(self, scale: float = 1.0, dim: int = 0) -> None:
        super().__init__()
        self.scale, self.dim = scale, dim

    def forward(self, out: Outputs) -> torch.Tensor:
        return self.scale * (out.p - out.z_target).pow(2).mean()


@pytest.fixture
def with_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LOSSES, "fake", _NeedsPredictor)


def test_weight_zero_drops_the_term_and_its_branches(with_fake: None) -> None:
    on = build_criterion({"infonce": {"weight": 1.0}, "fake": {"weight": 0.5}}, dim=16)
    off = build_criterion({"infonce": {"weight": 1.0}, "fake": {"weight": 0.0}}, dim=16)
    assert set(on.terms) == {"infonce", "fake"} and set(off.terms) == {"infonce"}
    assert on.terms["fake"].dim == 16  # context reaches the terms that ask for it
    cfg = ModelConfig(width=4, proj_hidden_dim=16, proj_dim=16, pred_hidden_dim=16)
    with_branches = build_model(cfg, 3, 16, on.requires)
    without = build_model(cfg, 3, 16, off.requires)
    assert with_branches.online.predictor is not None and with_branches.target is not None
    assert without.online.predictor is None and without.target is None


def test_a_ramped_term_stays_built_while_its_weight_is_zero(with_fake: None) -> None:
    crit = build_criterion(
        {"infonce": {}, "fake": {"weight": 0.0, "ramp_from": 1.0, "ramp_start": 0, "ramp_end": 4}}
    )
    assert "fake" in crit.terms and crit.weights(2.0)["fake"] == pytest.approx(0.5)


def test_total_is_the_weighted_sum_of_the_logged_terms(with_fake: None) -> None:
    torch.manual_seed(0)
    z, p, t = torch.randn(3, 2, 8, 4).unbind(0)
    out = Outputs(z=z, sample_ids=torch.arange(8), p=p, z_target=t, epoch=1.0)
    crit = Criterion(
        {"infonce": LOSSES["infonce"](0.2), "fake": _NeedsPredictor(2.0)},
        {
            "infonce": WeightSchedule(0.5),
            "fake": WeightSchedule(3.0, ramp_from=1.0, ramp_start=0, ramp_end=2),
        },
    )
    total, parts = crit(out)
    assert total.item() == pytest.approx(
        0.5 * parts["infonce"].item() + 2.0 * parts["fake"].item(), rel=1e-6
    )


def test_every_term_argument_is_a_dotted_config_key() -> None:
    from raysl.config import Config

    flat = Config().to_flat()
    assert {"loss.infonce.weight", "loss.infonce.temperature", "loss.infonce.ramp_start"} <= set(
        flat
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_term_lists_its_differences_from_the_official_code(name: str) -> None:
    """Each term's docstring (module or class) has the list, empty only where it says so."""
    import sys

    cls = LOSSES[name]
    docs = (sys.modules[cls.__module__].__doc__ or "") + (cls.__doc__ or "")
    assert "Differences from the official code" in docs, name
