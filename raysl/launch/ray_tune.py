"""Ray Tune studies: Optuna proposes, ASHA stops early, each trial is one `fit()`, MLflow records.

This module is the study's driver (`run_study`); its parts live next to it:

- **Trials** (`raysl.launch.tune_trials`). A trial with one worker runs `raysl.train.fit`
  directly inside the Tune trial (a TorchTrainer would add ~20 s per trial on a small
  machine); a trial with several workers launches the TorchTrainer of
  `raysl.launch.torch_trainer` from inside the trial, the Train V2 pattern, and forwards its
  rank-0 reports to Tune with `TuneReportCallback`. Every epoch is one Tune report, so ASHA's
  rungs are in epochs. Trials checkpoint every epoch and resume from it when restored.
- **Search.** Optuna (`raysl.launch.optuna_search.StudySearch`, Ray's `OptunaSearch` told
  every epoch, the stopping one included, and ASHA-stopped trials as PRUNED) with a
  define-by-run space (`SearchSpec.sample`: conditionals), TPE (multivariate, grouped,
  constant liar for concurrent trials, seeded) and persistent storage (an Optuna journal
  file in the study directory). Optuna trial attrs `ray_trial_id`, `mlflow_run_id` and the
  MLflow tag `raysl.optuna_trial` link the two.
- **PBT** (`tune.scheduler.pbt`; `raysl.launch.pbt`): no searcher (Ray refuses one next to
  PBT) but an initial population drawn up front; every trial's lineage on its run, and the
  winner's as `best_config.yaml` with `schedule:`. Files in `--out`: `raysl.launch.study_files`.
- **MLflow.** The driver (never the workers) logs: a parent run per study, a nested child per
  trial (`#3 completed val 97.9`), per-epoch metrics and the end status (FINISHED for
  completed and ASHA-stopped trials, `raysl.status` telling them apart; FAILED), via
  `raysl.tracking.StudyTracker` from a Tune callback (`raysl.launch.tune_tracking`). The
  leaderboard is read back from MLflow (`rank_trials`), so `raysl tune`, `raysl report` and
  the parent's table agree.
- **Resume.** `Tuner.restore` continues the study from its directory; the parent run and the
  Optuna study continue; child runs are found by trial id, never duplicated.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import ray.tune

from raysl.launch.epoch_log import EpochLog
from raysl.launch.optuna_search import SEARCHERS, load_optuna_study
from raysl.launch.pbt import pbt_lineages
from raysl.launch.study_files import (
    best_checkpoint,
    load_state,
    save_state,
    trial_config,
    write_leaderboard,
)
from raysl.launch.tune_checkpoints import repair_checkpoints
from raysl.launch.tune_state import KeepState, repair_state, restorable
from raysl.launch.tune_tracking import (
    ACTIVE,
    StudyCallback,
    merge_results,
    row_metrics,
    study_params,
    study_records,
)
from raysl.launch.tune_trials import auto_concurrency, scheduler, search_alg, trainable
from raysl.outputs import experiment_name
from raysl.search import SearchSpec
from raysl.search.spec import Pbt
from raysl.study_console import StudyTable
from raysl.tracking.board import records as board_records
from raysl.tracking.describe import study_question
from raysl.tracking.outbox import WAIT_S, Outbox
from raysl.tracking.outcome import record_outcome, study_board, summary_line


def run_study(
    spec: SearchSpec,
    out: Path,
    storage: str,
    tracking_uri: str,
    resume: bool = False,
    address: str | None = None,
    live: bool | None = None,
) -> dict[str, Any]:
    """Run (or continue) the study of `spec`; returns the best trial and the leaderboard.

    Args:
        out: the local study directory (log, study.json with the MLflow parent run id and the
            Optuna journal, the leaderboard files).
        storage: where Tune keeps the experiment and trial checkpoints: `<storage>/<out's
            name>` (`raysl.outputs.experiment_name`; with the default storage, the parent
            of `out`, that is `out` itself), the finalists in `<storage>/<out's
            name>-finalists`.
    """
    import optuna

    from raysl.launch.session import ray_session
    from raysl.tracking import StudyTracker

    optuna.logging.disable_default_handler()  # Optuna's log lines go to the study's log file
    optuna.logging.enable_propagation()
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out) if resume else {}
    state.setdefault("optuna_study", f"{spec.name}-{uuid.uuid4().hex[:8]}")
    epochs = spec.base.epochs
    table = StudyTable(
        spec.name, spec.tune.metric, spec.tune.mode, epochs, spec.tune.num_samples, live=live
    )
    multi = spec.tune.multi_objective  # several objectives: a Pareto front, no single winner
    table.objectives = tuple(m for m, _ in spec.tune.goals) if multi else ()
    table.note(
        f"starting Ray ({'joining ' + address if address else 'a local cluster'}; "
        f"log: {out / 'raysl.log'})…"
    )
    with ray_session(address, log_file=out / "raysl.log"):
        from raysl.launch.capacity import check_study_capacity

        waiting = check_study_capacity(spec, address)  # before any MLflow run or trial exists
        question = study_question(spec.path)
        tracker = StudyTracker(
            tracking_uri,
            experiment=spec.name,
            study_name=state["optuna_study"],
            description="\n\n".join(filter(None, [question, f"`raysl tune {spec.path}`"])),
            tags={"raysl.search_space": str(spec.path)},
            parent_run_id=state.get("parent_run_id"),
            metric=spec.tune.metric,
            mode=spec.tune.mode,
            system_metrics=True,
        )
        state["parent_run_id"] = tracker.parent_run_id
        save_state(out, state)
        objectives = ",".join(f"{m}:{mode}" for m, mode in spec.tune.goals)
        tracker.set_study_tags(
            {
                "raysl.search_order": ",".join(p.key for p in spec.params),
                "raysl.objectives": objectives,
            }
        )
        if not resume:
            tracker.log_study_params(study_params(spec))
        key = state["optuna_study"]
        ACTIVE[key] = {"tracker": tracker, "table": table, "spec": spec, "statuses": {}}
        # trial metrics and ends survive an MLflow server restart (raysl.tracking.outbox)
        ACTIVE[key]["outbox"] = Outbox(
            tracking_uri, echo=lambda line: table.console.print(line, markup=False, highlight=False)
        )
        outbox = ACTIVE[key]["outbox"]
        # an epoch reaches MLflow once its checkpoint is registered (raysl.launch.epoch_log)
        ACTIVE[key]["epochs"] = EpochLog(
            lambda trial, metrics, epoch: outbox.call(
                "result",
                tracker.trial_result,
                trial,
                metrics,
                epoch,
                again=tracker.trial_result_again,
            )
        )
        ACTIVE[key]["inputs"] = study_records(tracker, spec, resume)
        name = experiment_name(out)
        experiment = f"{storage.rstrip('/')}/{name}"
        function = trainable(spec, storage, name=name)
        concurrency = spec.tune.max_concurrent or auto_concurrency(spec)
        # cut state files, and checkpoints a killed driver's state still names (tune_state,
        # tune_checkpoints)
        repaired = [*repair_state(experiment), *repair_checkpoints(experiment)] if resume else []
        restored = resume and restorable(experiment)
        table.start(f", {concurrency} at a time" + (", resumed" if restored else ""))
        for note in [*spec.notes, *repaired]:
            table.note(f"note: {note}")
        if waiting:
            table.console.print(f"note: {waiting}", markup=False, highlight=False)
        status, results = "failed", None
        try:
            if restored:
                if isinstance(spec.tune.scheduler, Pbt):  # numbers of the members again
                    search_alg(spec, out, key, concurrency)
                tuner = ray.tune.Tuner.restore(experiment, function, resume_errored=True)
            else:
                searcher = search_alg(spec, out, key, concurrency)
                tuner = ray.tune.Tuner(
                    function,
                    param_space=getattr(SEARCHERS.get(key), "space", None),  # PBT's population
                    tune_config=ray.tune.TuneConfig(
                        metric=spec.tune.metric,
                        mode=spec.tune.mode,
                        search_alg=searcher,
                        scheduler=scheduler(spec, key),
                        num_samples=spec.tune.num_samples,
                        max_concurrent_trials=concurrency,
                        time_budget_s=spec.tune.time_budget_s,
                        reuse_actors=True,  # no fresh process (and torch import) per trial
                    ),
                    run_config=ray.tune.RunConfig(
                        name=name,
                        storage_path=storage,
                        callbacks=[StudyCallback(key), KeepState()],
                        # PBT clones a donor's checkpoint some time after choosing it: keep all
                        checkpoint_config=ray.tune.CheckpointConfig(
                            num_to_keep=None if isinstance(spec.tune.scheduler, Pbt) else 1
                        ),
                        failure_config=ray.tune.FailureConfig(max_failures=spec.tune.max_failures),
                        verbose=0,
                    ),
                )
            from raysl.launch.interrupts import finished_or_interrupted

            # a fit() that Tune ended on a signal it caught, trials still running: interrupted
            with finished_or_interrupted(ACTIVE[key]["statuses"], spec.tune.time_budget_s):
                results = tuner.fit()
            if spec.tune.finalists is not None:  # the best trials again, with other seeds
                from raysl.launch.finalists import run_finalists

                merge_results(ACTIVE[key], results, spec)  # trials an earlier driver ran
                run_finalists(key, spec, storage, concurrency, name, resume)
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if results is not None:
                merge_results(ACTIVE[key], results, spec)
            # deliver what an outage held back (waiting for the server; not after a Ctrl-C)
            gap = ACTIVE[key]["outbox"].gap(5.0 if status == "interrupted" else WAIT_S)
            if gap:
                table.console.print(f"warning: {gap}", markup=False, highlight=False)
            tracker.close_running_trials(status)
            searched = [p.key for p in spec.params]
            board = study_board(tracker.study(), spec.tune)  # finalists, Pareto front first
            best = board[0] if board and board[0][spec.tune.metric] is not None else None
            lineages = pbt_lineages(spec, results, tracker, key)
            replay_note = None
            done = status == "completed" and best and not multi
            checkpoint = best_checkpoint(results, best) if done else None
            best_record, pareto_note = None, None
            if best is not None and multi:  # one run file per Pareto trial, no best_config.yaml
                from raysl.tracking.pareto import log_run_files

                pareto_note = log_run_files(
                    tracker, board, spec.tune.goals,
                    lambda row: trial_config(spec, ACTIVE[key]["statuses"], row, searched),
                    out / "pareto", spec.name,
                )  # fmt: skip
            elif best is not None:
                record = ACTIVE[key]["statuses"].get(best["trial_id"], {})
                best_searched = record.get("searched") or {
                    k: best[k] for k in searched if best.get(k) is not None
                }
                config = spec.config_for(best_searched).model_dump(exclude_none=True)
                best_record = {
                    "trial_id": best["trial_id"],
                    "metrics": record.get("metrics") or row_metrics(best, searched),
                    "config": config,
                    "name": spec.name,
                }
                if best["trial_id"] in lineages:  # PBT: the run file replays the lineage
                    from raysl.launch.pbt import adopt_winner

                    replay_note = adopt_winner(best_record, lineages, best, out, spec.name, tracker)
            winner = None
            if checkpoint is not None and best is not None:
                from raysl.tracking.model import try_finish_winner

                table.console.print("[dim]best trial: test-split evaluation, MLflow model…[/]")
                winner = try_finish_winner(
                    tracker.client, tracking_uri, tracker.parent_run_id,
                    spec.config_for(best_searched), checkpoint, best["trial_id"],
                    state["optuna_study"], spec.tune.register,
                )  # fmt: skip
            summary = summary_line(board, spec.tune)  # with the gain over the baseline
            record_outcome(tracker, board, spec.tune)
            tracker.study_ended(
                best_record,
                status,
                best_checkpoint=checkpoint,
                optuna_study=load_optuna_study(out, state["optuna_study"]),
                leaderboard=board_records(board, spec.tune.metric, searched, table.objectives),
                summary=summary,
            )
            write_leaderboard(out, board)
            footer = [
                f"MLflow: experiment '{spec.name}', parent run {tracker.parent_run_id} "
                f"({tracking_uri}); compare trials with: raysl ui"
            ]
            if replay_note:
                footer.append(replay_note)
            if pareto_note:
                footer.append(pareto_note)
            if winner:
                from raysl.tracking.model import winner_line

                footer.append(winner_line(winner))
            table.finish(board, footer, summary=summary, searched=searched)
            ACTIVE.pop(key, None)
    return {"best": best, "leaderboard": board, "parent_run_id": tracker.parent_run_id}
