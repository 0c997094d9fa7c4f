"""Finalists: after the search, the K best full-budget trials re-run with S other seeds.

`tune.finalists: {top: K, seeds: S, baseline: true}`. The K trials that completed their full
budget with the best last value of `tune.metric` (ties by trial id, as `rank_trials`) are
each re-run S times: the same config with `seed` = the trial's seed + 1, ..., + S
(`finalist_runs`). With `baseline` (the default) the baseline trial (`tune.baseline`) is
re-run the same way when it completed its budget and is not among the K, so the study's gain
over the baseline compares two means over S + 1 seeds (one seed of each can differ by more
than the gain: benchmarks/RESULTS.md, "Fashion-MNIST studies"). The K x S (or (K + 1) x S)
fits run through Ray as a second Tuner over a grid of them (`{"finalist": i}`), with the
study's trainable (`raysl.launch.tune_trials.trainable`, `runs=`), so each fit reserves
the resources of a trial and as many run at once as the search ran; no searcher, no
scheduler (every fit runs the full budget), checkpoints and retries as for trials; `Tuner`
state in `<storage>/<study>-finalists` (`<study>`: the Tune experiment of the search,
`raysl.outputs.experiment_name`), which `raysl tune --resume` restores (the fits are
chosen again from the same trials, the baseline by its MLflow tag; the finalists' MLflow
runs are found by Tune trial id; a state file Tune left cut short is put back first,
`raysl.launch.tune_state`); a driver killed once a finalist has started or finished
resumes with each (trial, seed) fit logged once (tests/launch/test_finalists.py).

MLflow: each fit is a nested child run of the study's parent (`#3 seed 1 val 97.5`), tagged
`raysl.kind=finalist` (the leaderboard's trials stay `raysl.kind=trial`),
`raysl.finalist_of=<the trial's Ray trial id>`, `raysl.seed`, with per-epoch metrics as a
trial's. The leaderboard (`raysl.tracking.ranking.rank_trials`) ranks the finalists first by
their mean over the S + 1 runs (the original trial is one seed), with std and n; the
winner's `best_config.yaml` is its original config (and its checkpoint the original's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray.tune

from raysl.launch.tune_checkpoints import repair_checkpoints
from raysl.launch.tune_state import KeepState, repair_state, restorable
from raysl.launch.tune_tracking import ACTIVE, _error_line, _metrics, commit_epochs, drop_epochs
from raysl.search import SearchSpec


def pick_finalists(
    statuses: Mapping[str, Mapping[str, Any]], metric: str, mode: str, top: int
) -> list[str]:
    """The trial ids of the `top` completed trials with the best last `metric`."""
    sign = -1.0 if mode == "max" else 1.0
    done = [
        (sign * float(r["metrics"][metric]), trial_id)
        for trial_id, r in statuses.items()
        if r.get("status") == "completed" and (r.get("metrics") or {}).get(metric) is not None
    ]
    return [trial_id for _, trial_id in sorted(done)[:top]]


def finalist_runs(
    spec: SearchSpec,
    statuses: Mapping[str, Mapping[str, Any]],
    numbers: Mapping[str, Any],
    baseline: str | None = None,
) -> list[dict[str, Any]]:
    """One entry per fit: `{"of", "number", "seed", "params"}` (params: searched + seed).

    `baseline`: the baseline trial's id; with `tune.finalists.baseline` it is re-run too
    (after the top K) when it completed its budget and is not among them."""
    finalists = spec.tune.finalists
    assert finalists is not None
    picked = pick_finalists(statuses, spec.tune.metric, spec.tune.mode, finalists.top)
    done = (statuses.get(baseline) or {}).get("status") == "completed"
    if finalists.baseline and baseline is not None and done and baseline not in picked:
        picked.append(baseline)
    runs = []
    for trial_id in picked:
        searched = dict(statuses[trial_id].get("searched") or {})
        seed = spec.config_for(searched).seed
        for extra in range(1, finalists.seeds + 1):
            runs.append({
                "of": trial_id,
                "number": numbers.get(trial_id),
                "seed": seed + extra,
                "params": {**searched, "seed": seed + extra},
            })  # fmt: skip
    return runs


def baseline_trial(tracker: Any) -> str | None:
    """The Ray trial id of the study's baseline trial, from its MLflow run's tag
    `raysl.baseline` (set when the trial started, so a resumed driver finds it as well)."""
    for run in tracker.study().trials:
        if run.data.tags.get("raysl.baseline") == "true":
            return run.data.tags.get("raysl.trial_id")
    return None


def run_finalists(
    key: str,
    spec: SearchSpec,
    storage: str,
    concurrency: int,
    study: str | None = None,
    resume: bool = True,
) -> None:
    """Re-run the finalists of the study `ACTIVE[key]` (see the module docstring); `study`:
    its Tune experiment's name (default `spec.name`). Only a resumed study restores a
    finalists experiment it finds (`raysl tune` refuses to start a new study over one)."""
    from raysl.launch.optuna_search import SEARCHERS
    from raysl.launch.tune_trials import trainable

    active = ACTIVE[key]
    searcher = SEARCHERS.get(key)
    statuses = active["statuses"]
    numbers = {t: searcher.number(t) if searcher else None for t in statuses}
    baseline = baseline_trial(active["tracker"])
    runs = finalist_runs(spec, statuses, numbers, baseline)
    table = active["table"]
    if not runs:
        table.note("finalists: no trial ran its full budget; none re-run")
        return
    active["finalist_runs"] = runs
    names = ", ".join(
        dict.fromkeys(_label(r) + (" (the baseline)" if r["of"] == baseline else "") for r in runs)
    )
    seeds = spec.tune.finalists.seeds  # type: ignore[union-attr]
    table.note(f"finalists: re-running {names} with {seeds} other seed(s) each ({len(runs)} fits)…")
    table.num_samples += len(runs)
    name = f"{study or spec.name}-finalists"
    experiment = f"{storage.rstrip('/')}/{name}"
    function = trainable(spec, storage, runs=[r["params"] for r in runs], name=study)
    if resume:
        for line in [*repair_state(experiment), *repair_checkpoints(experiment)]:
            table.note(f"note: {line}")
    if resume and restorable(experiment):
        tuner = ray.tune.Tuner.restore(experiment, function, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            function,
            param_space={"finalist": ray.tune.grid_search(list(range(len(runs))))},
            tune_config=ray.tune.TuneConfig(
                num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True
            ),
            run_config=ray.tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=[FinalistCallback(key), KeepState()],
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
                failure_config=ray.tune.FailureConfig(max_failures=spec.tune.max_failures),
                verbose=0,
            ),
        )
    tuner.fit()


def _label(run: Mapping[str, Any]) -> str:
    return f"#{run['number']}" if run.get("number") is not None else str(run["of"])


class FinalistCallback(ray.tune.Callback):
    """Each finalist fit as a nested MLflow run and a row of the live table (as
    `StudyCallback` does for trials); holds only the study's key (pickled by Tune)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _run(self, trial: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        active = ACTIVE.get(self.key)
        if active is None or "finalist_runs" not in active:
            return None
        return active, active["finalist_runs"][int(trial.config["finalist"])]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        found = self._run(trial)
        if found is None:
            return
        active, run = found
        spec: SearchSpec = active["spec"]
        searched = {k: v for k, v in run["params"].items() if k != "seed"}
        config = spec.config_for(run["params"]).override({"eval.test": False}).to_flat()
        tags = {
            "raysl.kind": "finalist",
            "raysl.finalist_of": run["of"],
            "raysl.seed": str(run["seed"]),
        }
        if run.get("number") is not None:
            tags["raysl.finalist_number"] = str(run["number"])
        label = f"{_label(run)} seed {run['seed']}"
        active["tracker"].trial_started(trial.trial_id, label, config, searched, tags=tags)
        active["table"].trial_started(trial.trial_id, searched, label=f"{label} (finalist)")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        found = self._run(trial)
        if found is None:
            return
        active, _ = found
        metrics = _metrics(result)
        epoch = int(metrics.get("epoch", result.get("training_iteration", 0)))
        active["epochs"].add(trial.trial_id, metrics, epoch)  # logged once committed
        metric = active["spec"].tune.metric
        active["table"].trial_result(trial.trial_id, epoch, metrics.get(metric))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._run(trial) is not None:
            commit_epochs(ACTIVE.get(self.key), trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._run(trial) is not None:
            drop_epochs(ACTIVE.get(self.key), trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "completed", "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed", _error_line(trial))

    def _end(self, trial: Any, status: str, reason: str) -> None:
        found = self._run(trial)
        if found is None:
            return
        active, run = found
        tracker, spec = active["tracker"], active["spec"]
        active["epochs"].commit(trial.trial_id)
        active["outbox"].call("end", tracker.trial_ended, trial.trial_id, status, reason, None)
        last = (getattr(trial, "last_result", None) or {}).get(spec.tune.metric)
        active["outbox"].call("name", _rename, tracker, trial.trial_id, run, status, last, spec)
        active["table"].trial_ended(trial.trial_id, status, reason)


def _rename(
    tracker: Any, trial_id: str, run: Mapping[str, Any], status: str, last: Any, spec: Any
) -> None:
    """`#3 seed 1 val 97.5` and a description that says what the run is."""
    from raysl.tracking.describe import metric_label, number

    run_id = tracker.existing_trials()[trial_id]
    name = f"{_label(run)} seed {run['seed']}" + (" failed" if status == "failed" else "")
    if status != "failed" and last is not None:
        name += f" {metric_label(spec.tune.metric)} {number(last, spec.tune.metric)}"
    note = (
        f"**Finalist**: trial {_label(run)} (Ray trial `{run['of']}`) of study "
        f"`{tracker.study_name}` re-run with seed {run['seed']}, the same config otherwise; "
        f"status **{status}**. The leaderboard ranks the finalists by their mean "
        f"{spec.tune.metric} over the trial and its re-runs."
    )
    tracker.client.update_run(run_id, name=name)
    tracker.client.set_tag(run_id, "mlflow.note.content", note)
