"""`StudySearch` against a real Optuna journal, without a Ray cluster: what Optuna is told."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from raysl.launch.optuna_search import StudySearch, load_optuna_study, optuna_storage

pytestmark = pytest.mark.ray  # imports Ray Tune


def _searcher(out: Path) -> StudySearch:
    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("optim.lr", 0.01, 1.0, log=True)

    return StudySearch(
        space=space,
        metric="val/knn_top1",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=optuna_storage(out),
        max_epochs=3,
    )


def test_stopping_result_is_reported_and_early_stops_are_pruned(tmp_path: Path) -> None:
    search = _searcher(tmp_path)
    for tid in ("a", "b"):
        assert "optim.lr" in search.suggest(tid)
    search.on_trial_result("a", {"val/knn_top1": 50.0, "epoch": 1})
    search.on_trial_complete("a", {"val/knn_top1": 60.0, "epoch": 2})  # ASHA's stop, epoch 2 < 3
    for epoch, value in ((1, 40.0), (2, 70.0)):
        search.on_trial_result("b", {"val/knn_top1": value, "epoch": epoch})
    search.on_trial_complete("b", {"val/knn_top1": 80.0, "epoch": 3})
    a, b = load_optuna_study(tmp_path, "s").trials
    assert a.state.name == "PRUNED" and a.intermediate_values == {1: 50.0, 2: 60.0}
    assert b.state.name == "COMPLETE" and b.value == 80.0
    assert b.intermediate_values == {1: 40.0, 2: 70.0, 3: 80.0}


def test_a_trial_told_before_the_driver_died_is_left_alone(tmp_path: Path) -> None:
    search = _searcher(tmp_path)
    search.suggest("a")
    search.on_trial_result("a", {"val/knn_top1": 50.0, "epoch": 1})
    # Another driver (the one that was killed) finished the trial in the journal after
    # this searcher's state was saved: Tune restarts the trial from its checkpoint.
    study = load_optuna_study(tmp_path, "s")
    study.tell(study.trials[0].number, 77.0)
    search.link("a", "run123")  # would raise UpdateFinishedTrialError
    search.on_trial_result("a", {"val/knn_top1": 60.0, "epoch": 2})
    search.on_trial_complete("a", {"val/knn_top1": 70.0, "epoch": 3})
    (trial,) = load_optuna_study(tmp_path, "s").trials
    assert trial.state.name == "COMPLETE" and trial.value == 77.0  # the journal's answer stands
    assert trial.intermediate_values == {1: 50.0} and "mlflow_run_id" not in trial.user_attrs


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_tune_sampler_picks_optunas_sampler(tmp_path: Path, sampler: str) -> None:
    """`tune.sampler: random` is Optuna's RandomSampler seeded by `tune.seed`: its trials are
    the ones a plain Optuna study with that sampler asks for; `tpe` (default) is TPE."""
    from raysl.launch.optuna_search import make_searcher
    from raysl.search import load_search_spec

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nconfig: {epochs: 2, data: {source: digits}, model: {backbone: convnet}}\n"
        "search:\n  optim.lr: {loguniform: [0.01, 1.0]}\n"
        f"tune: {{sampler: {sampler}, seed: 3, baseline: false, startup_trials: 0}}\n"
    )
    spec = load_search_spec(path)
    assert spec.tune.sampler == sampler
    search = make_searcher(spec, tmp_path, "s")
    kind = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}[sampler]
    assert type(search._ot_study.sampler) is kind
    if sampler == "random":
        lrs = [search.suggest(str(i))["optim.lr"] for i in range(3)]
        plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        assert lrs == [plain.ask().suggest_float("optim.lr", 0.01, 1.0, log=True) for _ in lrs]
