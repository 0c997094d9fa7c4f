"""ASHA never stops the study's baseline trial before its last epoch (`raysl.launch.asha`).

The rule on Ray's own scheduler code (trial handles carry only an id, all ASHA reads), then
real Tune: three trials one at a time, the baseline last and worst, so Ray's ASHA cuts it at
its first rung (the control: the same run without the searcher's name) and raysl's runs it to
the end, with the other trials cut exactly as Ray cuts them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from raysl.launch.asha import BaselineASHA, asha_scheduler
from raysl.launch.optuna_search import SEARCHERS
from raysl.search import load_search_spec

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


class Marks:
    """Stands where `StudySearch` stands in `SEARCHERS`: answers `is_baseline` by trial id."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def is_baseline(self, trial_id: str) -> bool:
        return trial_id in self.ids


@pytest.fixture
def marks():
    SEARCHERS["asha-test"] = found = Marks()  # type: ignore[assignment]
    yield found
    del SEARCHERS["asha-test"]


def _asha(key: str | None) -> BaselineASHA:
    return BaselineASHA(time_attr="training_iteration", metric="m", mode="max", max_t=4,
                        grace_period=1, reduction_factor=2, searcher_key=key)  # fmt: skip


def _rung(asha: BaselineASHA, values: dict[str, float], epoch: int = 1) -> dict[str, str]:
    out = {}
    for trial_id, value in values.items():
        trial = SimpleNamespace(trial_id=trial_id)
        if epoch == 1:
            asha.on_trial_add(None, trial)
        out[trial_id] = asha.on_trial_result(None, trial, {"training_iteration": epoch, "m": value})
    return out


def test_the_baseline_goes_on_where_an_equal_trial_is_cut(marks: Marks) -> None:
    marks.ids.add("base")
    asha = _asha("asha-test")
    got = _rung(asha, {"a": 9.0, "b": 8.0, "c": 1.0, "base": 1.0})
    assert got == {"a": CONTINUE, "b": STOP, "c": STOP, "base": CONTINUE}
    assert asha._num_stopped == 2  # Ray's count of stopped trials: the baseline is not one
    assert _rung(asha, {"base": 0.5}, epoch=2) == {"base": CONTINUE}
    assert _rung(asha, {"base": 0.5}, epoch=4) == {"base": STOP}  # its budget's end
    # the rungs still hold the baseline's values, as in Ray's ASHA
    assert any(0.5 in dict(rung[1]).values() for rung in asha._brackets[0]._rungs)


def test_without_a_baseline_it_is_rays_asha(marks: Marks) -> None:
    marks.ids.add("base")
    values = {"a": 9.0, "b": 8.0, "base": 1.0}
    assert _rung(_asha(None), values)["base"] == STOP  # tune.baseline: false
    assert _rung(_asha("no-such-study"), values)["base"] == STOP  # no searcher registered
    marks.ids.clear()
    assert _rung(_asha("asha-test"), values)["base"] == STOP  # not marked


def test_it_pickles_with_the_name_only(marks: Marks) -> None:
    """Tune pickles the scheduler into the study state: a name, not the searcher."""
    again = pickle.loads(pickle.dumps(_asha("asha-test")))
    marks.ids.add("base")
    assert again.searcher_key == "asha-test"
    assert _rung(again, {"a": 9.0, "b": 8.0, "base": 1.0})["base"] == CONTINUE


def test_a_study_file_gets_it_with_its_baseline_setting(tmp_path: Path) -> None:
    from tests.launch.test_ray_tune import study_file

    space = study_file(tmp_path, name="asha_file", num_samples=2)
    spec = load_search_spec(space)
    asha = asha_scheduler(spec, "key")
    assert spec.tune.baseline and asha.searcher_key == "key"  # tune.baseline: true by default
    assert asha._max_t == spec.base.epochs
    spec_off = load_search_spec(space, {"tune.baseline": False})
    assert asha_scheduler(spec_off, "key").searcher_key is None


# ---- real Tune -------------------------------------------------------------------------
def _trainable(config: dict) -> None:
    import ray.tune

    for _ in range(4):
        ray.tune.report({"m": config["value"]})


def _run(tmp: Path, key: str | None, marks: Marks) -> dict[float, int]:
    """Trials of value 9, 8 and 1 (the baseline), one at a time: epochs each ran."""
    import ray.tune

    class Mark(ray.tune.Callback):  # the driver learns the baseline's id as the searcher does
        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.config["baseline"]:
                marks.ids.add(trial.trial_id)

    results = ray.tune.Tuner(
        _trainable,
        param_space={
            "value": ray.tune.grid_search([9.0, 8.0, 1.0]),
            "baseline": ray.tune.sample_from(lambda spec: spec.config.value == 1.0),
        },
        tune_config=ray.tune.TuneConfig(scheduler=_asha(key), max_concurrent_trials=1),
        run_config=ray.tune.RunConfig(storage_path=str(tmp), callbacks=[Mark()], verbose=0),
    ).fit()
    return {r.config["value"]: len(r.metrics_dataframe) for r in results}


@pytest.mark.slow
@pytest.mark.ray
def test_real_tune_runs_the_baseline_to_the_end(tmp_path: Path, marks: Marks, local_ray) -> None:
    assert _run(tmp_path / "ray", None, marks) == {9.0: 4, 8.0: 1, 1.0: 1}  # Ray's ASHA
    assert _run(tmp_path / "raysl", "asha-test", marks) == {9.0: 4, 8.0: 1, 1.0: 4}
