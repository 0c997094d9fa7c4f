"""What a PBT study needs from its config and search space, checked before Ray starts.

`tune.scheduler: {pbt: {interval, quantile, resample, mutate}}` (`raysl.search.tune.parse_pbt`
reads it alone). Here, with the config and the searched params:

- every `mutate` key is searched (PBT resamples from its range), in every trial (no `when:`),
  and mutable (`raysl.mutable`: no tensor shape or model branch depends on it); a list-valued
  choice is refused (PBT shifts a choice to its neighbour, which needs scalars);
- a mutated loss weight never starts at 0: its term is built at the start only if it has a
  weight (a range with low > 0, or choices > 0);
- a mutated key has no `schedule:` of its own (PBT finds the schedule);
- one worker per trial: Train V2's `TuneReportCallback` forwards only the path of a Ray Train
  checkpoint, so PBT's exploit would have no Tune checkpoint to clone
  (`../shared/ecosystem.md` §5.7);
- one objective (PBT's quantiles rank by one metric);
- `interval` < epochs, at least one trial in each quantile (`num_samples × quantile ≥ 1`),
  and a checkpoint every epoch (set, with a note, where the config says otherwise).
"""

from __future__ import annotations

from raysl.config import Config
from raysl.mutable import mutable_problem
from raysl.search.problems import Problems
from raysl.search.spec import Param, Pbt, TuneSettings, is_number

AT = "tune.scheduler.pbt"


def check_pbt(
    base: Config, params: tuple[Param, ...], tune: TuneSettings, out: Problems, notes: list[str]
) -> Config:
    """Problems of a PBT study go to `out`; returns the base config with `checkpoint.every: 1`."""
    pbt = tune.scheduler
    assert isinstance(pbt, Pbt)
    searched = {p.key: p for p in params}
    flat = base.to_flat()
    for key in pbt.mutate:
        param = searched.get(key)
        if why := mutable_problem(key, flat):
            out.add(why, f"{AT}.mutate")
        elif param is None:
            out.add(
                f"{key} is not searched: give it a range under search: (PBT resamples from it)",
                f"{AT}.mutate",
            )
        elif param.when is not None:
            out.add(
                f"{key} is searched only when {param.when}: PBT mutates keys every trial has; "
                "drop the when: or the key",
                f"{AT}.mutate",
            )
        elif param.kind == "choice" and any(not is_number(c) for c in param.choices or ()):
            out.add(f"{key}: PBT mutates numeric choices only", f"{AT}.mutate")
        elif key.endswith(".weight") and float(param.extreme("low")) <= 0:  # type: ignore[arg-type]
            out.add(
                f"{key} can start at 0, and a term with weight 0 is not built: search it over "
                "values > 0 (e.g. {loguniform: [0.05, 1.0]})",
                f"search.{key}",
            )
        if key in base.schedule:
            out.add(f"{key} has a schedule: and is mutated by PBT: keep one", f"{AT}.mutate")
    if getattr(tune, "multi_objective", False):
        out.add(
            "PBT ranks the population by one metric: give tune.metric one metric, or use "
            "another scheduler for a multi-objective study",
            "tune.metric",
        )
    if tune.resources.workers > 1:
        out.add(
            "PBT needs one worker per trial: Train V2 forwards only the path of a Ray Train "
            "checkpoint to Tune, so an exploit would have nothing to clone; set workers: 1",
            "tune.resources.workers",
        )
    if pbt.interval >= base.epochs:
        out.add(
            f"interval {pbt.interval} >= epochs {base.epochs}: no trial would ever exploit; "
            f"set interval < {base.epochs}",
            f"{AT}.interval",
        )
    if tune.num_samples * pbt.quantile < 1:
        need = int(-(-1 // pbt.quantile))
        out.add(
            f"{tune.num_samples} trials x quantile {pbt.quantile:g} leaves no trial to exploit "
            f"or to be exploited: run at least {need} trials (num_samples), or raise quantile",
            f"{AT}.quantile",
        )
    if "epochs" in searched:
        out.add("PBT trials share one length: do not search epochs", "search.epochs")
    if base.checkpoint.every != 1:
        notes.append(
            f"checkpoint.every set from {base.checkpoint.every} to 1: PBT clones the latest "
            "epoch's checkpoint"
        )
        base = base.override({"checkpoint.every": 1})
    return base
