"""Config keys that may change while a run trains: `schedule:` and Population Based Training.

A key is *mutable* when changing it between two epochs changes no tensor's shape and no model
branch, so a run can put a new value in force at an epoch boundary, or continue from another
run's checkpoint with it changed (PBT's exploit):

- `optim.lr` (the warm-up/cosine curve is recomputed from the new base lr),
- `model.ema_momentum` (the EMA momentum curve likewise),
- `loss.<term>.weight` of a term without a `ramp_*` (a ramp is not piecewise constant),
- the term arguments each term lists in `LossTerm.MUTABLE` (temperatures, thresholds, bands).

Everything else is refused with the reason: queue/bank sizes, `proj_dim`, exits, the backbone
and the batch size change the shape of state a checkpoint holds; other keys (augmentation,
data, eval) are not applied mid-run.

`schedule: {loss.icc.weight: [[0, 0.0], [4, 0.3], [8, 1.0]]}` maps a mutable key to
`[epoch, value]` pairs, piecewise constant: the value is in force from the start of that
(0-based) epoch on; before the first pair the key's plain config value holds. `values_at`
reads it; the loop (`raysl.train`) applies it at epoch boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from raysl.losses import LOSSES
from raysl.yamlio import flatten, merge, unflatten

GLOBAL = ("optim.lr", "model.ema_momentum")

# keys whose change alters the shape of a checkpoint's tensors or the model's branches
SHAPE = {
    "data.batch_size": "the batch size sets the per-rank batch and the steps per epoch",
    "model.backbone": "the backbone is the model's architecture",
    "model.width": "the width sets every layer's shape",
    "model.proj_dim": "proj_dim sets the projector's and every bank's shape",
    "model.proj_hidden_dim": "the projector's hidden size is a layer shape",
    "model.proj_layers": "the projector's depth is the model's architecture",
    "model.pred_hidden_dim": "the predictor's hidden size is a layer shape",
    "epochs": "epochs sets the length of every schedule",
}
_SHAPE_ARGS = {
    "queue_size": "the queue's size is the shape of its bank",
    "bank_size": "the bank's size is the shape of its memory",
    "exits": "the exits are model branches",
    "exit_size": "the exits' size is a layer shape",
    "pseudo_hidden_dim": "the pseudo-label head's size is a layer shape",
}


def mutable_keys(flat: Mapping[str, Any]) -> list[str]:
    """Every mutable key of a flat config (terms that are present only)."""
    keys = [k for k in GLOBAL if k in flat]
    for term in sorted({k.split(".")[1] for k in flat if k.startswith("loss.")}):
        if term in LOSSES:
            if flat.get(f"loss.{term}.ramp_from") is None:
                keys.append(f"loss.{term}.weight")
            keys += [f"loss.{term}.{arg}" for arg in sorted(LOSSES[term].MUTABLE)]
    return keys


def mutable_problem(key: str, flat: Mapping[str, Any]) -> str | None:
    """Why `key` cannot change during a run of the flat config `flat` (None: it can)."""
    if key in mutable_keys(flat):
        return None
    parts = key.split(".")
    if key in SHAPE:
        why = SHAPE[key]
    elif parts[0] == "loss" and len(parts) == 3 and parts[1] in LOSSES:
        term, arg = parts[1], parts[2]
        if f"loss.{term}.weight" not in flat:
            return f"loss.{term} is not in the config: add it (weight 0 is fine) to change {key}"
        if arg == "weight":
            why = f"loss.{term} has a ramp (ramp_from); a ramp and a piecewise-constant weight do not compose: drop one"
        elif arg in _SHAPE_ARGS:
            why = _SHAPE_ARGS[arg]
        else:
            allowed = ", ".join(sorted(LOSSES[term].MUTABLE)) or "none"
            why = (
                f"{term}'s {arg} is fixed when the term is built (its mutable arguments: {allowed})"
            )
    else:
        why = "it is not applied while a run trains"
    return f"{key} cannot change during a run: {why}; mutable keys here: " + ", ".join(
        mutable_keys(flat)
    )


def values_at(schedule: Mapping[str, Any], epoch: int) -> dict[str, Any]:
    """The scheduled values in force during 0-based `epoch` (keys without a pair yet left out)."""
    now: dict[str, Any] = {}
    for key, pairs in schedule.items():
        for start, value in pairs:
            if start <= epoch:
                now[key] = value
    return now


def schedule_problem(schedule: Any, flat: Mapping[str, Any], epochs: int) -> str | None:
    """What is wrong with a `schedule:` value (None: nothing); values are checked by the caller."""
    if not isinstance(schedule, Mapping):
        return "must map mutable keys to [[epoch, value], ...], e.g. {loss.icc.weight: [[0, 0.0], [4, 0.3]]}"
    for key, pairs in schedule.items():
        if why := mutable_problem(key, flat):
            return why
        if not isinstance(pairs, list | tuple) or not pairs:
            return (
                f"{key}: write a non-empty list of [epoch, value] pairs, e.g. [[0, 0.0], [4, 0.3]]"
            )
        starts = []
        for pair in pairs:
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            if not ok or not isinstance(pair[0], int) or isinstance(pair[0], bool):
                return f"{key}: {pair!r} is not an [epoch, value] pair with an integer epoch"
            starts.append(pair[0])
        if starts != sorted(set(starts)) or starts[0] < 0:
            return f"{key}: epochs must be >= 0 and strictly increasing (got {starts})"
        if starts[-1] >= epochs:
            return (
                f"{key}: epoch {starts[-1]} is never reached (the run has epochs 0..{epochs - 1})"
            )
    return None


def flatten_schedule(value: Any) -> Any:
    """`{loss: {icc: {weight: [...]}}}` (as `--set schedule.loss.icc.weight=...` and flattened
    configs give it) -> `{"loss.icc.weight": [...]}`; other shapes are left to the checks."""
    if not isinstance(value, Mapping):
        return value
    flat: dict[str, Any] = {}
    for key, sub in value.items():
        if isinstance(sub, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten_schedule(sub).items()})
        else:
            flat[str(key)] = sub
    return flat


def check_schedule(value: Any, fields: Mapping[str, Any], config: type[BaseModel]) -> Any:
    """`schedule:` as {dotted mutable key: [[epoch, value], ...]}, every value valid for its key."""
    value = flatten_schedule(value)
    if not value:
        return {}
    base = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in fields.items()}
    if len(base) < len(config.model_fields) - 1:
        return value  # another field failed: its error is the one to read
    flat = {k: v for k, v in flatten(base).items() if v is not None}
    if why := schedule_problem(value, flat, int(base["epochs"])):
        raise ValueError(why)
    for key, pairs in value.items():
        for epoch, v in pairs:
            try:
                config.model_validate(merge(base, unflatten({key: v})))
            except ValidationError as exc:
                error = exc.errors()[0]
                raise ValueError(
                    f"{key} at epoch {epoch}: {error['msg'].removeprefix('Value error, ')} "
                    f"(got {v!r})"
                ) from None
    return value
