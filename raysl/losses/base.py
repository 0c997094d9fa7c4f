"""The model -> loss contract: `Outputs`, `LossTerm`, weight schedules and the weighted `Criterion`.

A loss term is an `nn.Module` whose `__init__` keyword arguments are its config schema
(`loss.<name>.<arg>`), typed with the aliases below so the config validates them. It names
the `Outputs` fields it reads in `requires`; the model builds only the branches that some
term with a non-zero weight requires (predictor, EMA target, ...). Adding a term touches
`raysl/losses/<name>.py`, one line in `raysl/losses/__init__.py` and its test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

# Types for term arguments: the config checks these ranges and names them in its errors.
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

# Constructor arguments that come from the run, not from `loss.<name>`; a term asks for any
# of them by naming it in its signature.
CONTEXT = frozenset({"dim", "feature_dim", "num_classes", "num_samples", "epochs"})


@dataclass(frozen=True)
class RunShape:
    """What the config alone says about a run, for `LossTerm.run_problems` (checked by config
    validation, before anything starts or is written)."""

    views: int  # augment.views, V
    batch_size: int  # data.batch_size, the global batch
    epochs: int
    stages: int  # the backbone's stages (exits follow stages 1..stages-1)


@dataclass
class Outputs:
    """What the model hands to the loss terms for one batch on one rank.

    Optional fields are filled only when some active term lists them in `requires`.
    Shapes: V views, B per-rank batch, D projection dim, F backbone feature dim.
    """

    z: Tensor  # (V, B, D) online projections
    sample_ids: Tensor  # (B,) dataset indices; unique within a global batch
    labels: Tensor | None = None  # (B,) class labels, -1 where unknown
    h: Tensor | None = None  # (V, B, F) backbone features
    p: Tensor | None = None  # (V, B, D) predictor outputs                      "p"
    z_target: Tensor | None = None  # (V, B, D) EMA-target projections, no grad  "z_target"
    z_sub: Tensor | None = None  # (E, V, B, D) projections of E sub-network exits  "z_sub"
    z_mix: Tensor | None = None  # (Vm, B, D) projections of mixed images          "z_mix"
    p_mix: Tensor | None = None  # (Vm, B, D) predictions of mixed images ("z_mix" and "p")
    mix_lam: Tensor | None = None  # (B,) weight of image i in mixture i
    mix_index: Tensor | None = None  # (B,) local row of the image mixed into image i
    epoch: float = 0.0  # fractional epoch of this step (for terms with their own schedules)


class LossTerm(nn.Module):
    """Base of all loss terms: `forward(out) -> scalar` for this rank's anchors.

    The value must be the mean over this rank's anchors of a per-anchor loss that may use
    every rank's samples (through `raysl.distributed.gather_with_grad`). DDP's gradient
    averaging then equals one process on the global batch.

    Model branches a term can ask for (set in `__init__` when they depend on arguments):
        requires: the `Outputs` fields it reads ("p" builds a predictor, "z_target" an EMA
            target, "z_sub" sub-network exits, "z_mix" a forward pass on mixed images).
        exits, exit_size: with "z_sub", the 1-based stages after which exits branch off and
            their size ("fc", "small", "same"; see `raysl.models.exits`).
        mixed_views: with "z_mix", how many views `mix()` mixes.
    Arguments listed in `MUTABLE` are stored as attributes of the same name and read only in
    `forward`, so setting the attribute equals building the term with the new value
    (tests/test_mutable.py checks each).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"z"})
    # arguments that may change between epochs (`schedule:`, PBT): plain attributes of the
    # same name that nothing derived is computed from (`raysl.mutable`)
    MUTABLE: ClassVar[frozenset[str]] = frozenset()
    exits: tuple[int, ...] = ()
    exit_size: str = "fc"
    mixed_views: int = 1
    # augment.views the term needs to learn at all: 2 where its positives are the other views
    # of an image (with one view it has none, and its loss is 0 or undefined)
    min_views: ClassVar[int] = 1

    @classmethod
    def run_problems(
        cls, name: str, args: Mapping[str, Any], run: RunShape
    ) -> list[tuple[str, str]]:
        """(dotted key, message) for each reason this term, with its validated arguments `args`
        (`loss.<name>.*`), cannot learn in `run`; empty when it can. Terms add their own
        cross-argument checks (calling this first)."""
        found = []
        if run.views < cls.min_views:
            found.append((
                "augment.views",
                f"loss.{name} needs at least {cls.min_views} views of each image (its positives "
                f"are the other views), but augment.views is {run.views}, so it cannot learn; "
                f"set augment.views: {cls.min_views}, or drop the term (loss.{name}.weight: 0)",
            ))  # fmt: skip
        return found

    def mix(self, views: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """With "z_mix": mix this rank's views (Vm, B, C, H, W) with partners from the same rank.

        Random choices come from `generator`, which is seeded identically on every rank.

        Returns:
            mixed (Vm, B, C, H, W), lam (B,) weight of image i in its mixture, index (B,)
            local row of its partner.
        """
        raise NotImplementedError(
            f"{type(self).__name__} requires 'z_mix' but does not define mix()"
        )

    def forward(self, out: Outputs) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class WeightSchedule:
    """A term's weight as a function of the (fractional) epoch.

    Constant `weight` when `ramp_from` is None. Otherwise `ramp_from` until `ramp_start`, a
    linear ramp to `weight` at `ramp_end`, then `weight`: a warm-up is
    `ramp_from=0, ramp_start=0, ramp_end=E`; ICC's switch from the similarity loss to the
    clustering loss is a ramp down on one term and a ramp up on the other.
    """

    weight: float = 1.0
    ramp_from: float | None = None
    ramp_start: float = 0.0
    ramp_end: float = 0.0

    def __call__(self, epoch: float) -> float:
        if self.ramp_from is None or epoch >= self.ramp_end:
            return self.weight
        if epoch < self.ramp_start:
            return self.ramp_from
        fraction = (epoch - self.ramp_start) / (self.ramp_end - self.ramp_start)
        return self.ramp_from + fraction * (self.weight - self.ramp_from)

    @property
    def always_zero(self) -> bool:
        return self.weight == 0 and not self.ramp_from


class Criterion(nn.Module):
    """Weighted sum of named loss terms; also returns every term's value for logging."""

    def __init__(self, terms: Mapping[str, LossTerm], schedules: Mapping[str, WeightSchedule]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.schedules = dict(schedules)

    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(term.requires for term in self.terms.values()))

    @property
    def exit_spec(self) -> tuple[tuple[int, ...], str]:
        """The sub-network exits the model must build: (stages, size); ((), "fc") for none."""
        specs = {(t.exits, t.exit_size) for t in self.terms.values() if "z_sub" in t.requires}
        if len(specs) > 1:
            raise ValueError(
                f"loss terms ask for different sub-network exits: {sorted(specs)}; use one"
            )
        return specs.pop() if specs else ((), "fc")

    @property
    def mixer(self) -> LossTerm | None:
        """The term that mixes images for the "z_mix" forward pass (at most one)."""
        mixers = [t for t in self.terms.values() if "z_mix" in t.requires]
        if len(mixers) > 1:
            raise ValueError("only one loss term may mix images ('z_mix')")
        return mixers[0] if mixers else None

    def weights(self, epoch: float) -> dict[str, float]:
        return {name: schedule(epoch) for name, schedule in self.schedules.items()}

    def forward(self, out: Outputs) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the total loss and each term's unweighted value.

        A term whose weight is 0 at this epoch (but not always) is still computed and
        multiplied by 0: every rank then uses the same parameters in every step, which DDP
        requires, and the term's state (banks) keeps up to date.
        """
        parts = {name: term(out) for name, term in self.terms.items()}
        weights = self.weights(out.epoch)
        total = torch.stack([weights[name] * value for name, value in parts.items()]).sum()
        return total, parts
