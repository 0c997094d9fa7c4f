"""`tune.baseline`, `tune.finalists` and list-valued `tune.metric`/`tune.mode`: read, and bad
values refused before Ray starts (one line naming the key, exit 2, nothing created)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raysl.errors import ConfigError
from raysl.search import load_search_spec
from raysl.search.spec import Finalists
from tests.conftest import run_cli

STUDY = """\
# a test study
name: t
config:
  epochs: 4
  data: {{source: digits, batch_size: 128}}
  model: {{backbone: convnet, width: 16}}
  loss:
    infonce: {{weight: 1.0, temperature: 0.2}}
    supcon: {{weight: 0.0, temperature: 0.1}}
  optim: {{lr: 0.3}}
  eval: {{knn_k: {knn_k}}}
search:
  optim.lr: {{loguniform: [{low}, 1.0]}}
  loss.supcon.weight: {{choice: [0.0, 0.5]}}
  loss.supcon.temperature: {{loguniform: [0.5, 0.9], when: "loss.supcon.weight > 0"}}
tune:
  num_samples: 4
{tune}
"""


def write(tmp_path: Path, tune: str = "", low: float = 0.05, knn_k: str = "200") -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(STUDY.format(tune=tune, low=low, knn_k=knn_k))
    return path


def one_problem(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_search_spec(path)
    assert len(info.value.problems) == 1, str(info.value)
    return str(info.value.problems[0])


def test_defaults_and_values(tmp_path: Path) -> None:
    t = load_search_spec(write(tmp_path)).tune
    assert t.baseline is True and t.finalists is None and t.objectives == ()
    assert t.goals == (("val/knn_top1", "max"),) and not t.multi_objective
    t = load_search_spec(write(tmp_path, "  finalists: {top: 2, seeds: 3}\n  baseline: false")).tune
    assert t.finalists == Finalists(top=2, seeds=3, baseline=True) and t.baseline is False
    t = load_search_spec(write(tmp_path, "  finalists: {top: 1, seeds: 1, baseline: false}")).tune
    assert t.finalists == Finalists(top=1, seeds=1, baseline=False)
    multi = "  metric: [val/knn_top1, cost/device_hours]\n  mode: [max, min]"
    t = load_search_spec(write(tmp_path, multi)).tune
    assert t.objectives == (("val/knn_top1", "max"), ("cost/device_hours", "min"))
    assert (t.metric, t.mode, t.multi_objective) == ("val/knn_top1", "max", True)
    assert t.scheduler is None  # several objectives: no ASHA unless named (then refused)
    one = load_search_spec(write(tmp_path, "  metric: [val/knn_top1]\n  mode: [max]")).tune
    assert one.objectives == () and one.metric == "val/knn_top1"


def test_baseline_is_the_base_config_with_conditions(tmp_path: Path) -> None:
    spec = load_search_spec(write(tmp_path))
    # supcon's weight is 0 in the base config: its temperature's `when` fails, so it is not
    # part of the baseline (and 0.1 outside its range [0.5, 0.9] is no problem)
    assert spec.baseline() == {"optim.lr": 0.3, "loss.supcon.weight": 0.0}


@pytest.mark.parametrize(
    ("tune", "low", "key", "words"),
    [
        ("", 0.5, "search.optim.lr", ["optim.lr is 0.3", "outside [0.5, 1]", "baseline: false"]),
        ("  baseline: maybe", 0.05, "tune.baseline", ["true", "false"]),
        ("  finalists: {top: 0, seeds: 2}", 0.05, "tune.finalists.top", ["integer >= 1"]),
        ("  finalists: {top: 2, seed: 2}", 0.05, "tune.finalists.seed", ["did you mean 'seeds'"]),
        ("  finalists: 3", 0.05, "tune.finalists", ["{top: 3, seeds: 2}"]),
        ("  finalists: {baseline: 1}", 0.05, "tune.finalists.baseline", ["true", "a mean"]),
        ("  finalists: {top: 5, seeds: 1}", 0.05, "tune.finalists.top", ["> num_samples 4"]),
        (
            "  metric: [val/knn_top1, cost/device_hours]\n  mode: max",
            0.05, "tune.mode", ["lists 2 objectives", "[max, min]"],
        ),
        (
            "  metric: [val/knn_top1, cost/device_hours]\n  mode: [max, min, min]",
            0.05, "tune.mode", ["2 directions", "got 3 directions"],
        ),
        (
            "  metric: [val/knn_top1, val/knn_top1]\n  mode: [max, max]",
            0.05, "tune.metric", ["twice"],
        ),
        ("  metric: val/knn_top1\n  mode: [max, min]", 0.05, "tune.mode", ["names one metric"]),
        (
            "  metric: [val/knn_top1, cost/device_hours]\n  mode: [max, max]",
            0.05, "tune.mode", ["cost/device_hours is a cost", "mode: min"],
        ),
        (
            "  metric: [val/knn_top1, cost/device_hours]\n  mode: [max, min]\n"
            "  scheduler: {asha: {grace_period: 1}}",
            0.05, "tune.scheduler", ["ASHA ranks trials by one metric", "scheduler: none"],
        ),
        (
            "  metric: [val/knn_top1, cost/device_hours]\n  mode: [max, min]\n"
            "  finalists: {top: 2, seeds: 1}",
            0.05, "tune.finalists", ["one metric"],
        ),
        ("  metric: val/knn_top1_k20", 0.05, "tune.metric", ["only where eval.knn_k lists"]),
    ],
)  # fmt: skip
def test_bad_values_are_one_problem_naming_the_key(
    tmp_path: Path, tune: str, low: float, key: str, words: list[str]
) -> None:
    message = one_problem(write(tmp_path, tune, low=low))
    assert f": {key}: " in message, message
    for word in words:
        assert word in message, message


def test_a_null_base_value_is_named_with_its_fix(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(
        path.read_text().replace(
            "  optim.lr:", "  augment.crop_min_scale: {uniform: [0.1, 0.6]}\n  optim.lr:"
        )
    )
    message = one_problem(path)
    assert "search.augment.crop_min_scale" in message and "is null" in message
    assert "set config.augment.crop_min_scale to the number it stands for" in message


def test_per_k_knn_metrics_can_be_tuned_on(tmp_path: Path) -> None:
    spec = load_search_spec(write(tmp_path, "  metric: val/knn_top1_k20", knn_k="[200, 20]"))
    assert spec.tune.metric == "val/knn_top1_k20" and spec.base.eval.every == 1
    cost = load_search_spec(write(tmp_path, "  metric: cost/device_hours\n  mode: min"))
    assert cost.tune.metric == "cost/device_hours"


@pytest.mark.parametrize(
    ("tune", "key"),
    [
        (
            "  metric: [val/knn_top1, cost/device_hours]\n  mode: [max, min]\n  scheduler: asha",
            "tune.scheduler",
        ),
        ("  metric: [val/knn_top1, cost/device_hours]\n  mode: [max]", "tune.mode"),
        ("  finalists: {top: 2, seeds: -1}", "tune.finalists.seeds"),
        ("  baseline: 1", "tune.baseline"),
    ],
)
def test_the_cli_refuses_before_ray_starts(tmp_path: Path, tune: str, key: str) -> None:
    started = time.time()
    proc = run_cli("tune", str(write(tmp_path, tune)), "--out", str(tmp_path / "x"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f": {key}: " in lines[0], proc.stderr
    assert not (tmp_path / "x").exists() and time.time() - started < 30
    assert "starting Ray" not in proc.stdout


def test_finalists_re_run_the_baseline_with_the_same_seeds(tmp_path: Path) -> None:
    """The baseline (trial "b", 3rd best) is re-run after the top 2, with their seeds; not
    when it is already among them, stopped early, or `baseline: false`."""
    from raysl.launch.finalists import finalist_runs

    def status(value: float, done: str = "completed") -> dict:
        return {"status": done, "metrics": {"val/knn_top1": value}, "searched": {"optim.lr": 0.3}}

    statuses = {
        "a": status(90.0),
        "b": status(80.0),
        "c": status(85.0),
        "d": status(99.0, "stopped"),
    }
    numbers = {"a": 1, "b": 0, "c": 2, "d": 3}
    spec = load_search_spec(write(tmp_path, "  finalists: {top: 2, seeds: 2}"))
    runs = finalist_runs(spec, statuses, numbers, baseline="b")
    assert [(r["of"], r["seed"]) for r in runs] == [
        ("a", 1), ("a", 2), ("c", 1), ("c", 2), ("b", 1), ("b", 2)
    ]  # fmt: skip
    assert runs[-1]["params"] == {"optim.lr": 0.3, "seed": 2} and runs[-1]["number"] == 0
    assert len(finalist_runs(spec, statuses, numbers, baseline="a")) == 4  # already a finalist
    assert len(finalist_runs(spec, statuses, numbers, baseline="d")) == 4  # stopped by ASHA
    assert len(finalist_runs(spec, statuses, numbers, baseline=None)) == 4
    off = load_search_spec(write(tmp_path, "  finalists: {top: 2, seeds: 2, baseline: false}"))
    assert len(finalist_runs(off, statuses, numbers, baseline="b")) == 4
