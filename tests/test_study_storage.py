"""A study's Tune experiments are named by its --out, and a new study never starts over an
earlier one's Tune state (`raysl.outputs.experiment_name`, `check_no_earlier_study`).

An earlier study of the same --out name on the same storage left `experiment_state-*.json`
in `<storage>/<name>` or `<storage>/<name>-finalists`: a new study there would have its
finalists restored from the old ones instead of run. `raysl tune` refuses it with one line
naming --out and the fix (exit 2, nothing changed); `--resume` and other names go ahead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raysl.errors import ConfigError
from raysl.outputs import check_no_earlier_study, experiment_name


def _space(tmp_path: Path) -> Path:
    doc = {
        "name": "space",
        "config": {"data": {"source": "digits"}, "loss": {"infonce": {"weight": 1.0}}},
        "search": {"optim.lr": {"loguniform": [0.01, 1.0]}},
        "tune": {"num_samples": 2, "scheduler": "none"},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _state(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "experiment_state-2026-12-06_08-09-38.json").write_text("{}")


def test_the_experiment_is_named_by_out(tmp_path: Path, monkeypatch) -> None:
    assert experiment_name(tmp_path / "runs" / "cmsf_50") == "cmsf_50"
    monkeypatch.chdir(tmp_path / "..")
    assert experiment_name(Path(tmp_path.name) / "x" / "..") == tmp_path.name  # resolved


@pytest.mark.parametrize("left", ["again-finalists", "again"])
def test_a_new_study_over_earlier_tune_state_is_refused(refused, tmp_path: Path, left) -> None:
    space, storage = _space(tmp_path), tmp_path / "storage"
    _state(storage / left)
    line = refused(
        "tune", space, "--out", tmp_path / "runs" / "again", "--storage", storage,
        says=("--out", str(storage / left), "earlier study", "--resume", "another --out"),
    )  # fmt: skip
    assert "experiment_state" not in line  # says what, not Tune's file names
    # with the default storage (the parent of --out) the experiment is --out itself
    (tmp_path / "runs").mkdir()
    _state(tmp_path / "runs" / "old")
    refused("tune", space, "--out", tmp_path / "runs" / "old", says=("runs/old", "--out"))


def test_what_is_not_an_earlier_study_goes_ahead(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    check_no_earlier_study(str(storage), "again", tmp_path / "again")  # nothing there yet
    _state(storage / "other-finalists")
    (storage / "again").mkdir()  # a directory without Tune's state
    check_no_earlier_study(str(storage), "again", tmp_path / "again")
    check_no_earlier_study("s3://bucket/runs", "again", tmp_path / "again")  # not opened
    with pytest.raises(ConfigError, match="other-finalists holds Tune's state"):
        check_no_earlier_study(f"file://{storage}", "other", tmp_path / "other")
