"""The mutable values in force in one run: `schedule:`, PBT's exploits, and the run's lineage.

A run *tracks* the keys of its `schedule:` and the keys it was told may differ from a
checkpoint it resumes (`fit(mutable=...)`: PBT's `mutate` list). At the start of every epoch
the loop puts in force the config's values with the schedule's pairs for that epoch on top
(`Values.due`, applied to the live objects by `apply`): the lr and EMA-momentum curves are
recomputed from the new base value, a loss weight replaces its term's `WeightSchedule`, a
term argument is set as the term's attribute (`LossTerm.MUTABLE`). A run resumed from another
run's checkpoint with different values (an exploit) was built with its own values already.

The *lineage* is what was in force and where it came from: one entry per epoch at which a
tracked value changed, `{"epoch": e, "run": name, "values": {key: value}}`, plus `"from":
<run>` on the first entry after continuing from another run's checkpoint. It travels in the
checkpoint (`state["lineage"]`, and `meta.json` for readers without torch), so a PBT trial's
lineage holds its donors' history. `replay_config` turns a lineage into the run file that
reproduces it with `schedule:`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from raysl.config import Config
from raysl.losses import WeightSchedule
from raysl.mutable import values_at
from raysl.optim import scaled_lr
from raysl.schedules import ema_momentum, warmup_cosine

_CURVES = ("optim.lr", "model.ema_momentum")


def curves(cfg: Config, steps_per_epoch: int) -> tuple[Tensor, Tensor]:
    """(lr, EMA momentum) for every step of the run: warm-up + cosine from the batch-scaled lr,
    and BYOL's cosine momentum from `model.ema_momentum`."""
    total = cfg.epochs * steps_per_epoch
    base = scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling)
    lr = warmup_cosine(
        base,
        total,
        round(cfg.optim.warmup_epochs * steps_per_epoch),
        cfg.optim.min_lr_ratio,
        cosine=cfg.optim.schedule == "cosine",
    )
    ema = ema_momentum(cfg.model.ema_momentum, total, cosine=cfg.model.ema_schedule == "cosine")
    return lr, ema


def kept_terms(cfg: Config, tracked: Iterable[str]) -> set[str]:
    """Terms built even while their weight is 0: their weight is scheduled or may be mutated."""
    return {k.split(".")[1] for k in tracked if k.startswith("loss.") and k.endswith(".weight")}


class Values:
    """The tracked values of one run: those in force, and the lineage."""

    def __init__(self, cfg: Config, mutable: Iterable[str] = ()) -> None:
        self.cfg = cfg
        flat = cfg.to_flat()
        self.mutable = sorted(mutable)  # may differ from a checkpoint resumed
        self.keys = sorted(set(mutable) | set(cfg.schedule))
        self.pbt = bool(list(mutable))  # a PBT trial: also count its exploits
        self.base = {k: flat[k] for k in self.keys}  # what the run's objects were built with
        self.now = dict(self.base)
        self.lineage: list[dict[str, Any]] = []
        self.donor: str | None = None

    def restored(self, state: Mapping[str, Any], name: str) -> None:
        """Continue the lineage of a checkpoint (written by `state["run"]`)."""
        self.lineage = [dict(e) for e in state.get("lineage") or []]
        writer = state.get("run")
        self.donor = writer if writer and writer != name else None

    def due(self, epoch: int) -> dict[str, Any]:
        """The values that change at the start of 0-based `epoch` (and become the ones in force)."""
        target = {**self.base, **values_at(self.cfg.schedule, epoch)}
        changed = {k: v for k, v in target.items() if _json(self.now.get(k)) != _json(v)}
        self.now = target
        return changed

    def record(self, epoch: int, name: str) -> None:
        """Append a lineage entry if what is in force differs from what the lineage says."""
        known: dict[str, Any] = {}
        for entry in self.lineage:
            known.update(entry["values"])
        changed = {k: v for k, v in self.now.items() if _json(known.get(k, _UNSET)) != _json(v)}
        if changed or self.donor:
            entry: dict[str, Any] = {"epoch": epoch, "run": name, "values": changed}
            if self.donor:
                entry["from"] = self.donor
            self.lineage.append(entry)
        self.donor = None

    def metrics(self) -> dict[str, float]:
        """The numeric values in force, as per-epoch metrics: `train/weight/<term>` for a loss
        weight, `config/<key>` for any other key; in a PBT trial `pbt/exploits`, the times its
        lineage continued from another trial's checkpoint."""
        out: dict[str, float] = {}
        if self.pbt:
            out["pbt/exploits"] = float(sum(1 for e in self.lineage if e.get("from")))
        for key, value in self.now.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            parts = key.split(".")
            name = f"train/weight/{parts[1]}" if parts[-1] == "weight" else f"config/{key}"
            out[name] = float(value)
        return out


_UNSET = object()


def apply(run: Any, values: Mapping[str, Any]) -> None:
    """Put `values` in force in the live objects of `run` (a `raysl.train._Run`)."""
    if not values:
        return
    run.cfg_now = run.cfg_now.override(dict(values), where="schedule")
    if set(values) & set(_CURVES):
        run.lr, run.ema = curves(run.cfg_now, run.batches.steps_per_epoch)
    for key, value in values.items():
        parts = key.split(".")
        if parts[0] != "loss":
            continue
        term, arg = parts[1], parts[2]
        if arg == "weight":
            run.criterion.schedules[term] = WeightSchedule(weight=float(value))
        else:
            setattr(run.criterion.terms[term], arg, value)


def replay_config(final: Mapping[str, Any], lineage: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The flat config that replays a lineage: `final` (the last config, flat) with every
    tracked key at its epoch-0 value and `schedule` holding each key's values from epoch 0."""
    schedule: dict[str, list[list[Any]]] = {}
    for entry in lineage:
        for key, value in entry["values"].items():
            pairs = schedule.setdefault(key, [])
            if not pairs or _json(pairs[-1][1]) != _json(value):
                pairs.append([int(entry["epoch"]), value])
    flat = {k: v for k, v in final.items() if not k.startswith("schedule")}
    for key, pairs in schedule.items():
        flat[key] = pairs[0][1]
    flat["schedule"] = schedule  # every tracked key, so the replay tracks (and logs) the same
    return flat


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
