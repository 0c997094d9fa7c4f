"""Search-space files: loading, one clear message per bad input, and Optuna sampling."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from raysl.config import Config
from raysl.errors import ConfigError
from raysl.runfile import load_run_file
from raysl.search import Asha, Condition, Resources, load_search_spec, parse_condition
from tests.conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = """\
# a test study
name: t
config:
  epochs: 10
  data: {{source: digits, batch_size: 128}}
  model: {{backbone: convnet, width: 16}}
  loss:
    infonce: {{weight: 1.0, temperature: 0.2}}
    supcon: {{weight: 0.0, temperature: 0.1}}
  eval: {{every: 5}}
search:
{search}
tune:
{tune}
"""
SEARCH = "  optim.lr: {loguniform: [0.05, 1.0]}"
TUNE = "  metric: val/knn_top1\n  num_samples: 4\n  scheduler: {asha: {grace_period: 2}}"


def write(tmp_path: Path, search: str = SEARCH, tune: str = TUNE, text: str | None = None) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text if text is not None else BASE.format(search=search, tune=tune))
    return path


def line_of(path: Path, marker: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


# ---- bad input: (search, tune, --set, words the one message must contain, line marker) -----
S, T = SEARCH, TUNE
MALFORMED = {
    "unknown section": (None, None, {}, ["serach", "unknown section", "allowed"], "serach:"),
    "unknown tune key": (
        S,
        T + "\n  metirc: x",
        {},
        ["tune.metirc", "did you mean 'metric'"],
        "metirc",
    ),
    "unknown resources key": (
        S,
        T + "\n  resources: {cpus: 2}",
        {},
        ["tune.resources.cpus", "did you mean 'cpu'"],
        "cpus",
    ),
    "unknown asha key": (
        S,
        "  scheduler: {asha: {grace: 2}}",
        {},
        ["tune.scheduler.asha.grace", "did you mean 'grace_period'"],
        "grace",
    ),
    "unknown sampler": (
        S,
        T + "\n  sampler: bayes",
        {},
        ["tune.sampler", "tpe or random", "'bayes'"],
        "sampler:",
    ),
    "unknown scheduler": (
        S,
        "  scheduler: {hyperband: {max_t: 9}}",
        {},
        ["unknown scheduler 'hyperband'", "asha, pbt, none"],
        "hyperband",
    ),
    "not a config key": (
        "  optim.lrr: {loguniform: [0.05, 1.0]}",
        T,
        {},
        ["search.optim.lrr", "did you mean 'optim.lr'"],
        "optim.lrr",
    ),
    "a section": (
        "  optim: {loguniform: [0.05, 1.0]}",
        T,
        {},
        ["search.optim", "config section", "optim.lr"],
        "optim:",
    ),
    "low > high": (
        "  optim.lr: {loguniform: [1.0, 0.05]}",
        T,
        {},
        ["low 1.0 > high 0.05", "[0.05, 1.0]"],
        "optim.lr",
    ),
    "low == high": (
        "  optim.lr: {uniform: [0.5, 0.5]}",
        T,
        {},
        ["low == high", "constant", "config:"],
        "optim.lr",
    ),
    "loguniform low 0": (
        "  optim.weight_decay: {loguniform: [0, 0.1]}",
        T,
        {},
        ["loguniform needs low > 0", "uniform"],
        "weight_decay",
    ),
    "int not integers": (
        "  model.width: {int: [8.5, 32]}",
        T,
        {},
        ["int bounds must be integers", "uniform"],
        "model.width",
    ),
    "not a mapping": ("  optim.lr: 0.1", T, {}, ["one distribution", "loguniform"], "optim.lr"),
    "two kinds": (
        "  optim.lr: {uniform: [0.1, 1], loguniform: [0.1, 1]}",
        T,
        {},
        ["exactly one distribution", "uniform, loguniform"],
        "optim.lr",
    ),
    "unknown kind": (
        "  optim.lr: {normal: [0.1, 1]}",
        T,
        {},
        ["unknown distribution 'normal'", "uniform, loguniform, int, choice"],
        "optim.lr",
    ),
    "empty choice": ("  optim.name: {choice: []}", T, {}, ["non-empty list"], "optim.name"),
    "value out of range": (
        "  loss.infonce.temperature: {uniform: [0, 1]}",
        T,
        {},
        ["low 0.0", "greater than 0", "loss.infonce.temperature"],
        "loss.infonce.temperature:",
    ),
    "choice not allowed": (
        "  optim.name: {choice: [sgd, adam]}",
        T,
        {},
        ["choice 'adam'", "'sgd', 'lars' or 'adamw'"],
        "optim.name",
    ),
    "real range on an int key": (
        "  model.width: {uniform: [8, 32]}",
        T,
        {},
        ["takes integers", "{int: [8, 32]}"],
        "model.width",
    ),
    "log on int with step": (
        "  model.width: {int: [8, 32], log: true, step: 8}",
        T,
        {},
        ["log and a step > 1"],
        "model.width",
    ),
    "log on uniform": (
        "  optim.lr: {uniform: [0.1, 1], log: true}",
        T,
        {},
        ["'log' applies to int only", "loguniform"],
        "optim.lr",
    ),
    "term not in base": (
        "  loss.bsim.weight: {choice: [0.0, 1.0]}",
        T,
        {},
        ["loss term 'bsim' is not in the base config", "loss.bsim"],
        "bsim",
    ),
    "when syntax": (
        S
        + "\n  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: 'supcon weight is positive'}",
        T,
        {},
        ["cannot read the condition", "KEY OP VALUE"],
        "when",
    ),
    "when unknown key": (
        S
        + "\n  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: 'loss.supcon.wieght > 0'}",
        T,
        {},
        ["neither a searched key nor a config key", "'loss.supcon.weight'"],
        "wieght",
    ),
    "when needs a number": (
        S
        + "\n  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: 'loss.supcon.weight > high'}",
        T,
        {},
        ["compares numbers"],
        "when",
    ),
    "conditional cycle": (
        "  loss.supcon.weight: {choice: [0.0, 1.0], when: 'loss.supcon.temperature > 0.1'}\n"
        "  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: 'loss.supcon.weight > 0'}",
        T,
        {},
        [
            "conditional cycle",
            "loss.supcon.weight -> loss.supcon.temperature -> loss.supcon.weight",
        ],
        "loss.supcon.weight:",
    ),
    "all weights zero": (
        "  loss.infonce.weight: {choice: [0.0, 1.0]}",
        T,
        {},
        ["at its lowest", "no loss term has a weight > 0"],
        "search:",
    ),
    "metric on test": (
        S,
        "  metric: test/knn_top1",
        {},
        ["test split", "never tuned on", "val/knn_top1"],
        "metric",
    ),
    "metric only at the end": (
        S,
        "  metric: val/linear_top1",
        {},
        ["once, at the end", "allowed: val/knn_top1"],
        "metric",
    ),
    "metric of an absent term": (
        S,
        "  metric: train/loss/bsim\n  mode: min",
        {},
        ["train/loss/bsim", "not reported", "train/loss/infonce"],
        "metric",
    ),
    "metric of a term searched to 0": (
        "  loss.supcon.weight: {choice: [0.0, 1.0]}",
        "  metric: train/loss/supcon\n  mode: min",
        {},
        ["train/loss/supcon", "not reported"],
        "metric",
    ),
    "mode": (S, "  mode: maximize", {}, ["tune.mode", "must be max or min"], "mode: maximize"),
    "mode against the metric": (S, "  mode: min", {}, ["is an accuracy", "mode: max"], "mode: min"),
    "num_samples 0": (
        S,
        "  num_samples: 0",
        {},
        ["tune.num_samples", "integer >= 1"],
        "num_samples",
    ),
    "max_concurrent": (S, "  max_concurrent: 0", {}, ["auto or an integer >= 1"], "max_concurrent"),
    "max_failures": (
        S,
        "  max_failures: -1",
        {},
        ["tune.max_failures", "integer >= 0", "retries"],
        "max_failures",
    ),
    "grace > epochs": (
        S,
        "  scheduler: {asha: {grace_period: 11}}",
        {},
        ["grace_period 11 > epochs 10", "scheduler: none"],
        "grace_period",
    ),
    "grace < 1": (
        S,
        "  scheduler: {asha: {grace_period: 0}}",
        {},
        ["grace_period", "integer >= 1"],
        "grace_period",
    ),
    "reduction_factor < 2": (
        S,
        "  scheduler: {asha: {reduction_factor: 1}}",
        {},
        ["reduction_factor", "integer >= 2"],
        "reduction_factor",
    ),
    "searching epochs under asha": (
        "  epochs: {int: [5, 10]}",
        T,
        {},
        ["max_t is the config's epochs", "scheduler: none"],
        "epochs: {int",
    ),
    "workers vs batch": (
        S,
        "  resources: {cpu: 1, workers: 3}",
        {},
        ["data.batch_size (128)", "divisible by workers (3)"],
        "resources:",
    ),
    "workers with cpu < 1": (
        S,
        "  resources: {cpu: 0.5, workers: 2}",
        {},
        ["at least 1 CPU", "cpu: 1"],
        "resources",
    ),
    "gpu > 1 per worker": (
        S,
        "  resources: {gpu: 2}",
        {},
        ["gpu is per worker", "workers: 2"],
        "resources",
    ),
    "workers sharing a GPU": (
        S,
        "  resources: {gpu: 0.5, workers: 2}",
        {},
        ["cannot share a GPU", "gpu: 1"],
        "resources",
    ),
    "eval.every searched": (
        "  eval.every: {int: [1, 5]}",
        T,
        {},
        ["needed every epoch", "eval.every"],
        "eval.every",
    ),
    "bad tune.config": (
        S,
        T + "\n  config: {optim: {lr: -1}}",
        {},
        ["optim.lr", "greater than 0"],
        "config: {optim",
    ),
    "--set tune key": (S, T, {"tune.num_samples": 0}, ["--set", "tune.num_samples", ">= 1"], None),
    "--set search key": (S, T, {"search.optim.lr": 1}, ["--set", "edit the file"], None),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_each_bad_input_is_one_clear_problem(tmp_path: Path, case: str) -> None:
    search, tune, overrides, words, marker = MALFORMED[case]
    if search is None:
        path = write(
            tmp_path, text=BASE.format(search=SEARCH, tune=TUNE).replace("search:", "serach:")
        )
    else:
        path = write(tmp_path, search, tune)
    with pytest.raises(ConfigError) as info:
        load_search_spec(path, overrides)
    problems = info.value.problems
    assert len(problems) == 1, str(info.value)
    message = str(problems[0])
    for word in words:
        assert word in message, message
    if marker is None:
        assert problems[0].where == "--set", message
    else:
        assert problems[0].where == str(path), message
        assert problems[0].line == line_of(path, marker), message


def test_a_bad_sampler_exits_2_naming_the_key_and_creates_nothing(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    write(tmp_path, SEARCH, TUNE + "\n  sampler: grid")
    proc = run_cli("tune", "t.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tune.sampler: must be tpe or random" in proc.stderr and "'grid'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_problems_of_one_stage_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  optim.lr: {loguniform: [0, 1]}\n  model.width: {int: [8.5, 32]}",
        "  mode: up\n  num_samples: 0",
    )
    with pytest.raises(ConfigError) as info:
        load_search_spec(path)
    keys = [p.key for p in info.value.problems]
    assert keys == ["search.optim.lr", "search.model.width", "tune.mode", "tune.num_samples"]


# ---- loading ---------------------------------------------------------------------------
def test_a_study_loads_with_its_settings(tmp_path: Path) -> None:
    tune = (
        "  metric: val/knn_top1\n  mode: max\n  num_samples: 6\n  max_concurrent: 2\n"
        "  resources: {cpu: 2, gpu: 0, workers: 2}\n"
        "  scheduler: {asha: {grace_period: 3, reduction_factor: 2}}\n"
        "  seed: 7\n  time_budget_s: 60\n  startup_trials: 3\n  max_failures: 2"
    )
    spec = load_search_spec(write(tmp_path, tune=tune))
    t = spec.tune
    assert (t.metric, t.mode, t.num_samples, t.max_concurrent) == ("val/knn_top1", "max", 6, 2)
    assert t.resources == Resources(cpu=2.0, gpu=0.0, workers=2)
    assert t.scheduler == Asha(grace_period=3, reduction_factor=2)
    assert (t.seed, t.time_budget_s, t.startup_trials, t.max_failures) == (7, 60.0, 3, 2)
    assert [p.key for p in spec.params] == ["optim.lr"] and spec.params[0].log
    # ASHA (and Tune's strict metric check) needs val/knn_top1 every epoch: set, and noted
    assert spec.base.eval.every == 1 and "eval.every set from 5 to 1" in spec.notes[0]


def test_the_eval_every_note_names_the_scheduler_that_needs_it(tmp_path: Path) -> None:
    asha = load_search_spec(write(tmp_path))
    plain = load_search_spec(
        write(tmp_path, tune=TUNE.replace("{asha: {grace_period: 2}}", "none"))
    )
    assert "ASHA" in asha.notes[0]
    assert "ASHA" not in plain.notes[0] and "intermediate values" in plain.notes[0]


def test_defaults_auto_concurrency_and_no_scheduler(tmp_path: Path) -> None:
    spec = load_search_spec(write(tmp_path, tune="  max_concurrent: auto\n  scheduler: none"))
    assert spec.tune.max_concurrent is None and spec.tune.scheduler is None
    assert spec.tune.num_samples == 8 and spec.tune.metric == "val/knn_top1"
    spec = load_search_spec(write(tmp_path, tune="  metric: train/loss\n  mode: min"))
    assert spec.tune.scheduler == Asha() and spec.base.eval.every == 5  # loss: every epoch


def test_overrides_set_config_and_tune_keys(tmp_path: Path) -> None:
    search = SEARCH + "\n  loss.infonce.temperature: {loguniform: [0.05, 0.5]}"
    path = write(tmp_path, search)
    spec = load_search_spec(
        path,
        {
            "tune.num_samples": 3,
            "tune.scheduler.asha.grace_period": 4,
            "epochs": 12,
            "optim.lr": 0.1,
        },
    )
    assert spec.tune.num_samples == 3 and spec.tune.scheduler == Asha(grace_period=4)
    assert spec.base.epochs == 12 and spec.base.optim.lr == 0.1
    assert [p.key for p in spec.params] == ["loss.infonce.temperature"]  # optim.lr is fixed
    assert any("optim.lr fixed at 0.1" in note for note in spec.notes)
    assert load_search_spec(path, num_samples=5).tune.num_samples == 5
    with pytest.raises(ConfigError, match=r"--set: optim\.lrr"):
        load_search_spec(path, {"optim.lrr": 0.1})
    with pytest.raises(ConfigError, match="--num-samples"):
        load_search_spec(path, num_samples=0)


def test_tune_config_overrides_the_trials_only(tmp_path: Path) -> None:
    path = write(tmp_path, tune=TUNE + "\n  config: {epochs: 4, eval.every: 2, optim: {lr: 0.2}}")
    spec = load_search_spec(path)
    assert spec.base.epochs == 4 and spec.base.optim.lr == 0.2 and spec.base.eval.every == 1
    assert load_run_file(path).config.epochs == 10  # `raysl train` ignores tune:


def test_a_file_without_search_is_a_plain_run() -> None:
    path = REPO / "search_spaces" / "simclr_fashion_mnist.yaml"
    spec = load_search_spec(path)
    assert spec.params == () and spec.base == load_run_file(path).config and spec.notes == ()


def test_quickstart_is_a_small_digits_study_and_still_a_plain_run() -> None:
    path = REPO / "search_spaces" / "quickstart.yaml"
    spec = load_search_spec(path)
    assert {p.key for p in spec.params} >= {
        "optim.lr",
        "loss.infonce.temperature",
        "augment.crop_min_scale",
        "loss.supcon.weight",
        "loss.supcon.temperature",
    }
    assert spec.base.data.source == "digits" and spec.base.model.width == 16
    assert 20 <= spec.base.epochs <= 30 and spec.base.eval.every == 1
    assert spec.tune.num_samples == 8 and spec.tune.max_concurrent == 2
    assert spec.tune.scheduler == Asha(grace_period=5, reduction_factor=3)
    run = load_run_file(path)  # what `raysl train` sees: unchanged, supcon off
    assert run.config.epochs == 100 and run.config.loss.supcon.weight == 0.0


STUDIES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_file_loads(path: Path) -> None:
    spec = load_search_spec(path)
    text = path.read_text()
    assert spec.name == path.stem and text.startswith("# ") and "# Question" in text
    if "search:" in text:
        assert spec.params and "raysl tune search_spaces/" + path.name in text
        assert spec.tune.metric == "val/knn_top1" and spec.base.eval.every == 1
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(5):
            spec.config_for(spec.sample(study.ask()))


# ---- sampling --------------------------------------------------------------------------
SAMPLED = """\
  optim.lr: {loguniform: [0.01, 1.0]}
  model.width: {int: [8, 32], log: true}
  data.batch_size: {int: [64, 256], step: 64}
  augment.crop_min_scale: {uniform: [0.08, 0.5]}
  optim.name: {choice: [sgd, lars]}
  loss.supcon.weight: {choice: [0.0, 0.5, 1.0]}
  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: "loss.supcon.weight > 0"}"""


def run_study(spec, seed: int, trials: int = 40) -> optuna.Study:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=30)
    )

    def objective(trial: optuna.Trial) -> float:
        p = spec.sample(trial)
        trial.set_user_attr("sampled", p)
        return -((math.log10(p["optim.lr"]) + 1) ** 2) + p["loss.supcon.weight"]

    study.optimize(objective, n_trials=trials)
    return study


def test_tpe_samples_within_bounds_and_conditionals_only_when_they_hold(tmp_path: Path) -> None:
    spec = load_search_spec(write(tmp_path, SAMPLED, TUNE + "\n  baseline: false"))
    study = run_study(spec, seed=0)
    on = off = 0
    for trial in study.trials:
        p = trial.params
        assert 0.01 <= p["optim.lr"] <= 1.0 and 0.08 <= p["augment.crop_min_scale"] <= 0.5
        assert isinstance(p["model.width"], int) and 8 <= p["model.width"] <= 32
        assert isinstance(p["data.batch_size"], int) and p["data.batch_size"] in (64, 128, 192, 256)
        assert p["optim.name"] in ("sgd", "lars")
        if p["loss.supcon.weight"] > 0:
            on += 1
            assert 0.05 <= p["loss.supcon.temperature"] <= 0.5
        else:
            off += 1
            assert "loss.supcon.temperature" not in p
            assert "loss.supcon.temperature" not in trial.user_attrs["sampled"]
        cfg = spec.config_for(trial.user_attrs["sampled"])
        assert isinstance(cfg, Config) and cfg.optim.lr == p["optim.lr"]
        assert cfg.loss.supcon.temperature == p.get("loss.supcon.temperature", 0.1)  # base kept
    assert on and off
    dist = study.trials[0].distributions
    assert (
        dist["optim.lr"].log and dist["model.width"].log and not dist["augment.crop_min_scale"].log
    )
    assert dist["data.batch_size"].step == 64
    # log-distributed: the random start-up trials put about half of lr below 0.1 = sqrt(0.01 * 1)
    below = [t.params["optim.lr"] < 0.1 for t in study.trials[:30]]
    assert 0.25 <= sum(below) / len(below) <= 0.75


def test_sampling_is_deterministic_by_seed(tmp_path: Path) -> None:
    spec = load_search_spec(write(tmp_path, SAMPLED, TUNE + "\n  baseline: false"))
    a, b, c = (run_study(spec, seed, trials=12) for seed in (0, 0, 1))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.params for t in a.trials] != [t.params for t in c.trials]


def test_params_are_sampled_after_the_key_their_condition_reads(tmp_path: Path) -> None:
    search = (
        '  loss.supcon.temperature: {loguniform: [0.05, 0.5], when: "loss.supcon.weight > 0"}\n'
        "  loss.supcon.weight: {choice: [0.0, 1.0]}\n"
        '  optim.momentum: {uniform: [0.8, 0.95], when: "optim.name == sgd"}'  # a base key
    )
    spec = load_search_spec(write(tmp_path, search))
    assert [p.key for p in spec.params] == [
        "loss.supcon.weight",
        "loss.supcon.temperature",
        "optim.momentum",
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert all("optim.momentum" in spec.sample(study.ask()) for _ in range(5))


def test_list_choices_reach_the_config_as_lists(tmp_path: Path) -> None:
    text = BASE.format(search="  loss.selfcon.exits: {choice: [[1], [2], [2, 3]]}", tune=TUNE)
    text = text.replace("supcon: {weight: 0.0, temperature: 0.1}", "selfcon: {weight: 0.0}")
    spec = load_search_spec(write(tmp_path, text=text))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        p = spec.sample(study.ask())
        assert p["loss.selfcon.exits"] in ([1], [2], [2, 3])
        seen.add(spec.config_for(p).loss.selfcon.exits)
    assert seen == {(1,), (2,), (2, 3)}


def test_conditions() -> None:
    values = {"a": 0.5, "mode": "2q", "none": None, "flag": True, "exits": (2, 3)}
    holds = {
        "a > 0": True,
        "a >= 0.5": True,
        "a < 0.5": False,
        "a <= 1": True,
        "a == 0.5": True,
        "a != 0.5": False,
        "mode == 2q": True,
        "mode in [2q, label]": True,
        "mode in [none]": False,
        "none == null": True,
        "missing == null": True,
        "missing > 0": False,
        "mode > 0": False,
        "flag == true": True,
        "flag == 1": False,
        "exits == [2, 3]": True,
    }
    for text, expected in holds.items():
        assert parse_condition(text).holds(values) is expected, text
    assert parse_condition("loss.supcon.weight>0") == Condition("loss.supcon.weight", ">", 0)
    for bad in ("a", "a >> 0", "a > x", "a in 2q", "> 0", "a ="):
        with pytest.raises(ValueError):
            parse_condition(bad)
