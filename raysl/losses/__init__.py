"""Loss terms: the registry and the builder of the weighted criterion."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from raysl.losses.base import CONTEXT, Criterion, LossTerm, Outputs, WeightSchedule
from raysl.losses.bsim import BSIM
from raysl.losses.icc import ICC
from raysl.losses.infonce import InfoNCE
from raysl.losses.mean_shift import MeanShift
from raysl.losses.mining import Mining
from raysl.losses.selfcon import SelfCon
from raysl.losses.similarity import Similarity
from raysl.losses.supcon import SupCon

# One explicit registry: the key is the module name, the config key and the metric name.
LOSSES: dict[str, type[LossTerm]] = {
    "infonce": InfoNCE,  # SimCLR NT-Xent; MoCo with a queue
    "supcon": SupCon,  # supervised contrastive
    "selfcon": SelfCon,  # self-contrastive with sub-network exits
    "similarity": Similarity,  # BYOL / SimSiam negative cosine
    "icc": ICC,  # similarity loss -> feature-level cross-entropy
    "mean_shift": MeanShift,  # BYOL (k=1), MSF, CMSF
    "bsim": BSIM,  # mixture spurious positives
    "mining": Mining,  # potential-sample mining
}

SCHEDULE_KEYS = ("weight", "ramp_from", "ramp_start", "ramp_end")


def build_criterion(
    spec: Mapping[str, Mapping[str, Any] | None], keep: Iterable[str] = (), **context: Any
) -> Criterion:
    """Build the criterion from `cfg.loss` (term name -> {weight, ramp_*, term arguments}).

    Terms whose weight is 0 at every epoch are dropped, and with them every model branch
    only they needed, unless named in `keep` (their weight is scheduled to change).
    `context` (dim, num_classes, ...) reaches the terms that ask for it.
    """
    keep = set(keep)
    import inspect

    terms: dict[str, LossTerm] = {}
    schedules: dict[str, WeightSchedule] = {}
    for name, params in spec.items():
        if params is None:
            continue
        params = dict(params)
        schedule = WeightSchedule(
            **{key: params.pop(key) for key in SCHEDULE_KEYS if key in params}
        )
        if schedule.always_zero and name not in keep:
            continue
        cls = LOSSES[name]
        wanted = set(inspect.signature(cls).parameters) & CONTEXT
        terms[name] = cls(**params, **{key: context[key] for key in wanted if key in context})
        schedules[name] = schedule
    if not terms:
        raise ValueError("every loss term has weight 0; give at least one term a weight > 0")
    return Criterion(terms, schedules)


__all__ = [
    "BSIM",
    "ICC",
    "LOSSES",
    "Criterion",
    "InfoNCE",
    "LossTerm",
    "MeanShift",
    "Mining",
    "Outputs",
    "SelfCon",
    "Similarity",
    "SupCon",
    "WeightSchedule",
    "build_criterion",
]
