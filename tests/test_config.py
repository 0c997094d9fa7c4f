"""The typed config: dotted keys, overrides, and one clear message for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysl.cli import main
from raysl.config import Config
from raysl.errors import ConfigError
from raysl.runfile import load_run_file, parse_overrides
from tests.conftest import run_cli


def test_flat_round_trip_and_override() -> None:
    cfg = Config()
    assert Config.from_flat(cfg.to_flat()) == cfg
    changed = cfg.override({"optim.lr": 0.5, "loss.infonce.temperature": 0.1})
    assert changed.optim.lr == 0.5 and changed.loss.infonce.temperature == 0.1
    assert changed.loss.infonce.weight == 1.0  # untouched keys keep their values


def test_yaml_12_floats_and_typed_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("config:\n  optim:\n    weight_decay: 1e-4\n")
    run = load_run_file(
        path, parse_overrides(["optim.lr=2e-2", "epochs=3", "data.source=synthetic"])
    )
    assert run.config.optim.weight_decay == 1e-4 and run.config.optim.lr == 0.02
    assert run.config.epochs == 3 and run.name == "run"


def test_overriding_a_term_keeps_the_others() -> None:
    cfg = Config().override({"loss.infonce.temperature": 0.3})
    assert set(cfg.active_terms()) == {"infonce"}


# (file body, --set items, words the one message must contain, line it must name or None)
MALFORMED = {
    "unknown key": (
        "config:\n  optim:\n    lrr: 0.1\n",
        [],
        ["optim.lrr", "unknown key", "did you mean 'lr'"],
        3,
    ),
    "wrong type": ("config:\n  epochs: ten\n", [], ["epochs", "valid integer", "'ten'"], 2),
    "negative temperature": (
        "config:\n  loss:\n    infonce:\n      temperature: -0.5\n",
        [],
        ["loss.infonce.temperature", "greater than 0"],
        4,
    ),
    "batch 0": (
        "config:\n  data:\n    batch_size: 0\n",
        [],
        ["data.batch_size", "greater than 0"],
        3,
    ),
    "yaml syntax": ("config:\n  optim: {lr: 0.1\n", [], ["YAML syntax error"], 3),
    "unknown section": (
        "name: x\ntrian:\n  epochs: 3\n",
        [],
        ["trian", "unknown section", "config"],
        2,
    ),
    "unknown loss term": (
        "config:\n  loss:\n    infonse: {weight: 1}\n",
        [],
        ["loss.infonse", "unknown loss term", "infonce"],
        3,
    ),
    "duplicate key": ("config:\n  epochs: 3\n  epochs: 4\n", [], ["epochs", "appears twice"], 3),
    "fraction out of range": (
        "config:\n  data:\n    val_fraction: 1.5\n",
        [],
        ["data.val_fraction", "less than 1"],
        3,
    ),
    "bad choice": (
        "config:\n  optim:\n    name: adam\n",
        [],
        ["optim.name", "'sgd', 'lars' or 'adamw'"],
        3,
    ),
    "config not a mapping": ("config: [1, 2]\n", [], ["config", "mapping"], 1),
    "all weights zero": (
        "config:\n  loss:\n    infonce: {weight: 0}\n",
        [],
        ["loss", "no loss term has a weight > 0"],
        2,
    ),
    "ramp backwards": (
        "config:\n  loss:\n    infonce: {ramp_from: 0, ramp_start: 5, ramp_end: 2}\n",
        [],
        ["loss.infonce", "ramp_end"],
        3,
    ),
    "set without =": ("config: {}\n", ["optim.lr"], ["--set", "KEY=VALUE"], None),
    "set unknown key": (
        "config: {}\n",
        ["optim.lrr=0.1"],
        ["--set", "optim.lrr", "unknown key"],
        None,
    ),
    "set bad value": (
        "config: {}\n",
        ["model.proj_dim=-3"],
        ["--set", "model.proj_dim", "greater than 0"],
        None,
    ),
    "not a mapping file": ("- just\n- a list\n", [], ["YAML mapping"], 1),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_config_gives_one_clear_message_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body, sets, words, line = MALFORMED[case]
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    out = tmp_path / "out"
    argv = ["train", str(path), "--out", str(out)] + [
        arg for item in sets for arg in ("--set", item)
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} missing from: {err}"
    if line is not None:
        assert f"{path}:{line}:" in err, err
    assert not out.exists(), "nothing may be started or written for bad input"


def test_missing_file_via_the_real_command(tmp_path: Path) -> None:
    proc = run_cli("train", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr and "no such file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_config_command_prints_dotted_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("config:\n  optim: {lr: 0.7}\n")
    proc = run_cli("config", str(path), "--changed")
    assert proc.returncode == 0, proc.stderr
    assert (
        "optim.lr" in proc.stdout and "0.7" in proc.stdout and "optim.momentum" not in proc.stdout
    )


def test_config_error_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("config:\n  epochs: 0\n  optim: {lr: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_run_file(path)
    assert len(info.value.problems) == 2
    assert {p.key for p in info.value.problems} == {"epochs", "optim.lr"}


def test_bad_data_path_exits_2_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fm.yaml"
    path.write_text(f"config:\n  data: {{source: fashion_mnist, root: {tmp_path / 'nowhere'}}}\n")
    out = tmp_path / "out"
    proc = run_cli("train", str(path), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "data.root" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
