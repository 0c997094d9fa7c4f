"""Values that change during a run: `schedule:`, a resume with mutated keys (PBT's exploit), and
the lineage that turns one into the other."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from raysl.checkpoint import list_checkpoints, load_checkpoint
from raysl.config import Config
from raysl.errors import ConfigError
from raysl.losses import LOSSES, Outputs
from raysl.mutable import mutable_keys, mutable_problem, values_at
from raysl.train import fit
from raysl.train_values import replay_config
from tests.conftest import TINY

BASE = Config().override(
    {**TINY, "epochs": 4, "checkpoint.keep": 9, "loss.icc.weight": 0.0, "loss.icc.tau2": 0.1}
)


def test_values_at_is_piecewise_constant_from_each_epoch() -> None:
    schedule = {"a": [(0, 0.0), (2, 0.3), (5, 1.0)], "b": [(3, 7)]}
    assert values_at(schedule, 0) == {"a": 0.0}
    assert values_at(schedule, 1) == {"a": 0.0}
    assert values_at(schedule, 2) == {"a": 0.3}
    assert values_at(schedule, 4) == {"a": 0.3, "b": 7}
    assert values_at(schedule, 99) == {"a": 1.0, "b": 7}


def test_which_keys_are_mutable() -> None:
    flat = BASE.to_flat()
    keys = mutable_keys(flat)
    assert {"optim.lr", "model.ema_momentum", "loss.infonce.weight", "loss.icc.tau1"} <= set(keys)
    assert "loss.infonce.temperature" in keys and "loss.icc.weight" in keys
    for key, why in [
        ("model.proj_dim", "shape"),
        ("loss.infonce.queue_size", "queue"),
        ("data.batch_size", "batch"),
        ("augment.views", "not applied"),
        ("loss.supcon.temperature", "not in the config"),
    ]:
        problem = mutable_problem(key, flat)
        assert problem and why in problem and key in problem
    ramped = BASE.override({"loss.icc.ramp_from": 0.0, "loss.icc.ramp_end": 2.0}).to_flat()
    assert "ramp" in mutable_problem("loss.icc.weight", ramped)


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ({"model.proj_dim": [[0, 64]]}, "proj_dim"),
        ({"optim.lr": [[0, -1.0]]}, "greater than 0"),
        ({"optim.lr": [[2, 0.1], [1, 0.2]]}, "increasing"),
        ({"optim.lr": [[4, 0.1]]}, "never reached"),
        ({"optim.lr": [[0, 0.1, 3]]}, "[epoch, value] pair"),
        ({"optim.lr": 0.3}, "list of [epoch, value]"),
        ({"loss.icc.ramp_end": [[0, 1.0]]}, "fixed when the term is built"),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_key(schedule: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        BASE.override({"schedule": schedule})
    (problem,) = info.value.problems
    assert problem.key == "schedule" and words in problem.message, problem.message


def test_setting_a_mutable_argument_equals_building_the_term_with_it() -> None:
    """The contract of `LossTerm.MUTABLE`: an attribute set later is the constructor's value."""
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 16, 32), dim=-1)
    out = Outputs(z=z, sample_ids=torch.arange(16), labels=torch.arange(16) % 4)
    out.p, out.z_target, out.h = z.flip(0), z.detach(), torch.randn(2, 16, 32)
    mattered: set[str] = set()
    for name, cls in LOSSES.items():
        for arg in sorted(cls.MUTABLE):
            kwargs = {"dim": 32} if "dim" in cls.__init__.__code__.co_varnames else {}
            if name == "mining":
                kwargs["warmup_epochs"] = 0.0
            old = getattr(cls(**kwargs), arg)
            new = old * 0.7 if old else 0.3
            changed = cls(**kwargs)
            setattr(changed, arg, new)
            fresh = cls(**{**kwargs, arg: new})
            assert getattr(changed, arg) == getattr(fresh, arg) == new
            if name in ("selfcon", "bsim", "mean_shift"):  # exits, mixes, a bank: not here
                continue
            losses = []
            for term in (cls(**kwargs), changed, fresh):
                torch.manual_seed(1)
                losses.append(term(out))
            assert torch.equal(losses[1], losses[2]), (name, arg)
            if not math.isclose(float(losses[0]), float(losses[1])):
                mattered.add(name)
    assert mattered >= {"infonce", "supcon", "icc", "mining"}  # the batch exercises each term


def test_an_exploit_resumed_with_mutated_values_is_replayed_by_its_schedule(
    tmp_path: Path,
) -> None:
    """Run A to epoch 2, continue it with a new lr and ICC weight (what PBT's exploit does);
    the run file `replay_config` writes from the lineage reproduces every epoch exactly."""
    mutate = ["optim.lr", "loss.icc.weight", "loss.infonce.temperature"]
    first = BASE.override({"loss.icc.weight": 0.5})
    fit(first, checkpoint_dir=tmp_path / "a", name="trial_a", mutable=mutate)
    donor = tmp_path / "a" / "epoch_0002"  # of 4
    second = first.override({"optim.lr": 0.2, "loss.icc.weight": 1.0})
    fit(second, checkpoint_dir=tmp_path / "b", name="trial_b", mutable=mutate, resume_from=donor)
    state = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    lineage = state["lineage"]
    assert lineage[0]["epoch"] == 0 and lineage[0]["run"] == "trial_a"
    assert lineage[0]["values"] == {
        "optim.lr": 0.1, "loss.icc.weight": 0.5, "loss.infonce.temperature": 0.2
    }  # fmt: skip
    assert lineage[1] == {
        "epoch": 2, "run": "trial_b", "from": "trial_a",
        "values": {"optim.lr": 0.2, "loss.icc.weight": 1.0},
    }  # fmt: skip
    flat = replay_config(state["config"], lineage)
    assert flat["schedule"] == {
        "optim.lr": [[0, 0.1], [2, 0.2]], "loss.icc.weight": [[0, 0.5], [2, 1.0]],
        "loss.infonce.temperature": [[0, 0.2]],
    }  # fmt: skip
    replay = Config.from_flat(flat)
    fit(replay, checkpoint_dir=tmp_path / "r", name="replay")
    replayed = load_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    for ours, theirs in zip(replayed["history"], state["history"], strict=True):
        for key in ("val/knn_top1", "train/loss", "train/loss/icc", "lr", "train/weight/icc"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours["epoch"])
    assert [e["values"] for e in replayed["lineage"]] == [e["values"] for e in lineage]
    # and without `mutable`, a changed config is still refused
    with pytest.raises(ConfigError, match="different config"):
        fit(second, checkpoint_dir=tmp_path / "c", resume_from=donor)


def test_a_weight_scheduled_from_zero_builds_its_term(tmp_path: Path) -> None:
    cfg = BASE.override({"epochs": 2, "schedule": {"loss.icc.weight": [[1, 0.5]]}})
    metrics = fit(cfg, checkpoint_dir=tmp_path / "s")
    state = load_checkpoint(list_checkpoints(tmp_path / "s")[-1])
    first, second = state["history"]
    assert first["train/weight/icc"] == 0.0 and second["train/weight/icc"] == 0.5
    assert "train/loss/icc" in metrics  # computed (x 0) from the start
    plain = fit(BASE.override({"epochs": 2}))
    assert "train/loss/icc" not in plain  # weight 0 and not scheduled: left out
