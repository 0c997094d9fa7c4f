"""Population Based Training over raysl's per-epoch trial checkpoints (Ray Tune's
`PopulationBasedTraining`; Jaderberg et al., 2017, arXiv:1711.09846).

Every `interval` epochs (`time_attr="epoch"`, the epochs a trial's checkpoint has done) a
trial in the bottom `quantile` of the population stops, takes the checkpoint of a trial in the
top `quantile` (model, optimizer, loss-term state such as queues and banks, RNG), and continues
with that trial's config and each `mutate` key resampled from its search range (probability
`resample`) or multiplied by 0.8 or 1.2, clamped to the range (a choice moves to its
neighbour). `fit(mutable=...)` accepts the changed keys; the trial's lineage (`raysl.train_values`)
records the donor and the values in force from each epoch on.

Ray refuses a search algorithm next to PBT, so the initial population is drawn up front
(`initial_population`: the baseline trial first, then `SearchSpec.sample` under Optuna's
seeded `RandomSampler`, conditions respected) and handed to Tune's `BasicVariantGenerator` as
`points_to_evaluate`; there is no Optuna study (no journal, no Optuna plots). `Population`
numbers the members #0, #1, … in that order, as the Optuna numbers do in other studies.

Differences from Ray's own PBT recipes: perturbations are clamped to the searched range; the
population's random choices are seeded with `tune.seed` (Ray's PBT draws from Python's
`random`). Trials with several workers are refused (`raysl.search.pbt`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.tune
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from raysl.search import Param, SearchSpec
from raysl.search.spec import Pbt
from raysl.train_values import replay_config

logger = logging.getLogger(__name__)


def initial_population(spec: SearchSpec) -> list[dict[str, Any]]:
    """`tune.num_samples` starting configs: the baseline (if `tune.baseline`), then seeded
    random samples of the search space."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.tune.seed))
    points = [spec.baseline()] if spec.tune.baseline else []
    while len(points) < spec.tune.num_samples:
        trial = study.ask()
        points.append(spec.sample(trial))
        study.tell(trial, 0.0)
    return points


class Population:
    """The searcher-shaped registry of a PBT study's members (`SEARCHERS[key]`): numbers by
    the order of `initial_population`, learnt from each trial's first config."""

    def __init__(self, points: list[dict[str, Any]], base: Mapping[str, Any]) -> None:
        keys = sorted({k for point in points for k in point})
        # Tune wants every point's keys in the param space: a key a condition left out of a
        # point keeps the base config's value there
        self.space = {k: base[k] for k in keys}
        self.points = [{**self.space, **point} for point in points]
        self.numbers: dict[str, int] = {}

    def search_alg(self, concurrency: int) -> Any:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=self.points, max_concurrent=concurrency)

    def adopt(self, trial_id: str, config: Mapping[str, Any]) -> None:
        if trial_id not in self.numbers:
            for i, point in enumerate(self.points):
                if i not in self.numbers.values() and dict(config) == point:
                    self.numbers[trial_id] = i
                    break

    def number(self, trial_id: str) -> int | None:
        return self.numbers.get(trial_id)

    def link(self, trial_id: str, mlflow_run_id: str) -> None:
        """No Optuna trial to link."""


def pbt_scheduler(spec: SearchSpec) -> Any:
    """The study's `PopulationBasedTraining` (synchronous unless `synch: false`)."""
    pbt = spec.tune.scheduler
    assert isinstance(pbt, Pbt)
    params = {p.key: p for p in spec.params}
    random.seed(spec.tune.seed)  # PBT's choices (quantiles, donors, factors) draw from `random`
    return _LastEpochKept(
        spec.base.epochs,
        time_attr="epoch",
        perturbation_interval=pbt.interval,
        hyperparam_mutations={key: _domain(params[key]) for key in pbt.mutate},
        quantile_fraction=pbt.quantile,
        resample_probability=pbt.resample,
        custom_explore_fn=_Clamp([params[key] for key in pbt.mutate]),
        log_config=False,
        synch=pbt.synch,
    )


class _LastEpochKept(PopulationBasedTraining):
    """PBT that never exploits on a trial's last epoch: the trial is done, and sending it back
    to a donor's last checkpoint would leave it nothing to train (Ray's PBT expects a stop
    criterion outside the trainable; raysl's trials end themselves after `epochs`)."""

    def __init__(self, epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epochs = epochs

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("epoch", 0) >= self.epochs:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _domain(param: Param) -> Any:
    if param.kind == "choice":
        return list(param.choices or ())
    low, high = float(param.low or 0), float(param.high or 0)
    if param.kind == "int":
        if param.log:
            return ray.tune.lograndint(int(low), int(high) + 1)
        return ray.tune.qrandint(int(low), int(high), param.step or 1)
    return (
        ray.tune.loguniform(low, high)
        if param.kind == "loguniform"
        else ray.tune.uniform(low, high)
    )


class _Clamp:
    """PBT's explore step multiplies by 0.8 or 1.2: keep the result inside the searched range."""

    def __init__(self, params: list[Param]) -> None:
        self.params = [p for p in params if p.kind != "choice"]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for p in self.params:
            value = min(max(config[p.key], p.low), p.high)  # type: ignore[type-var]
            config[p.key] = round(value) if p.kind == "int" else float(value)
        return config


# ---- inside a trial ---------------------------------------------------------------------------
def exploit_note(resume_from: Path, trial_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Result fields for the first report after an exploit: `pbt_from` = "<donor>@<epoch>",
    `pbt_changes` = "optim.lr 0.075→0.0403, ..." (this trial's values against the donor's)."""
    try:
        meta = json.loads((resume_from / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    donor = meta.get("run")
    if not donor or donor == trial_id:
        return {}
    theirs = meta.get("config") or {}
    changes = ", ".join(
        f"{k} {_short(theirs.get(k))}→{_short(v)}"
        for k, v in params.items()
        if k in theirs and json.dumps(theirs[k]) != json.dumps(v)
    )
    return {"pbt_from": f"{donor}@{meta.get('epoch')}", "pbt_changes": changes}


# ---- the driver, at the end -------------------------------------------------------------------
def trial_lineage(checkpoint: Path | None) -> dict[str, Any] | None:
    """`{"lineage", "history", "config"}` of a trial's last checkpoint (its `meta.json`)."""
    if checkpoint is None:
        return None
    try:
        meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if "lineage" not in meta:
        return None
    return {k: meta.get(k) for k in ("lineage", "history", "config", "run", "threads")}


def exploits(lineage: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The lineage entries at which the trial continued from another trial's checkpoint."""
    return [e for e in lineage if e.get("from")]


def replay_file(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config of the run file that replays a trial (`raysl train` of it reproduces
    the trial's per-epoch metrics on the same hardware): its last config, with `schedule:`."""
    flat = replay_config(record["config"], record["lineage"])
    flat["eval.test"] = True  # the study never looks at test; a run of the file does
    return flat


def lineage_line(record: Mapping[str, Any], numbers: Mapping[str, int | None]) -> str:
    """`#3: epoch 2 from #1 (optim.lr 0.36, loss.icc.weight 0.4); epoch 4 from #0 (...)`."""
    parts = []
    for entry in exploits(record["lineage"]):
        donor = str(entry["from"])
        name = f"#{numbers[donor]}" if numbers.get(donor) is not None else donor
        values = ", ".join(f"{k} {_short(v)}" for k, v in entry["values"].items())
        parts.append(f"epoch {entry['epoch']} from {name}" + (f" ({values})" if values else ""))
    return "; ".join(parts) or "no exploit"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def finish_pbt(
    results: Any, client: Any, runs: Mapping[str, str], numbers: Mapping[str, int | None]
) -> dict[str, dict[str, Any]]:
    """Log every trial's lineage on its MLflow run (artifact `lineage.json`, tags
    `raysl.pbt_exploits` and `raysl.pbt_lineage`); returns {trial_id: lineage record}."""
    records: dict[str, dict[str, Any]] = {}
    for result in results or ():
        trial_id = (result.metrics or {}).get("trial_id")
        checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else None
        record = trial_lineage(checkpoint)
        if not trial_id or record is None:
            logger.warning("PBT: no lineage for trial %s (checkpoint %s)", trial_id, checkpoint)
            continue
        records[trial_id] = record
        run_id = runs.get(trial_id)
        if run_id is None:
            continue
        client.log_dict(run_id, record, "lineage.json")
        client.set_tag(run_id, "raysl.pbt_exploits", str(len(exploits(record["lineage"]))))
        client.set_tag(run_id, "raysl.pbt_lineage", lineage_line(record, numbers)[:4000])
    return records


def winner_file(
    record: Mapping[str, Any], out: Path, name: str, number: int | None, line: str
) -> dict[str, Any]:
    """Write `<out>/best_config.yaml`, the run file that replays the PBT winner; returns its
    flat config (also the parent run's `best_config.yaml`)."""
    from raysl.runfile import run_file_text

    flat = replay_file(record)
    label = f"#{number}" if number is not None else str(record.get("run"))
    description = f"replays PBT trial {label} of study {name} (lineage: {line})"
    if record.get("threads"):  # float sums in another order differ by ~1e-7 relative
        description += (
            f"; bit-exact on CPU with OMP_NUM_THREADS={record['threads']}, as the trial ran"
        )
    (out / "best_config.yaml").write_text(run_file_text(f"{name}_best", description, flat))
    return flat


def pbt_lineages(spec: SearchSpec, results: Any, tracker: Any, key: str) -> dict[str, Any]:
    """PBT: every trial's lineage logged on its run; {trial_id: lineage, "numbers": ...}."""
    if not isinstance(spec.tune.scheduler, Pbt) or results is None:
        return {}
    from raysl.launch.optuna_search import SEARCHERS

    searcher = SEARCHERS.get(key)
    runs = tracker.existing_trials()
    numbers = {tid: searcher.number(tid) if searcher else None for tid in runs}
    lineages = finish_pbt(results, tracker.client, runs, numbers)
    summary = {  # the parent's view of the population: who continued from whom, when
        f"#{numbers.get(tid)}": lineage_line(record, numbers) for tid, record in lineages.items()
    }
    tracker.client.log_dict(tracker.parent_run_id, summary, "pbt_lineage.json")
    return {**lineages, "numbers": numbers}


def adopt_winner(
    best_record: dict[str, Any],
    lineages: Mapping[str, Any],
    best: Mapping[str, Any],
    out: Path,
    name: str,
    tracker: Any,
) -> str:
    """PBT: the best record's config becomes the run file that replays the winner's lineage
    (also `<out>/best_config.yaml`); returns the footer line that says how to replay it."""
    lineage = lineages[best["trial_id"]]
    line = lineage_line(lineage, lineages["numbers"])
    best_record["config"] = winner_file(lineage, out, name, best.get("number"), line)
    best_record["description"] = f"replays PBT trial #{best.get('number')}: {line}"
    tracker.set_study_tags({"raysl.pbt_lineage": line[:4000]})
    return (
        f"PBT winner #{best.get('number')}: {line}; replay it: "
        f"raysl train {out / 'best_config.yaml'}"
    )
