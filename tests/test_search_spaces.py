"""Every shipped run file validates, and the ones that can run here do what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysl.reporting import Recorder
from raysl.runfile import load_run_file
from raysl.train import fit
from tests.conftest import REPO, run_cli
from tests.data.data_fakes import write_cifar

FILES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_run_file_validates_and_documents_itself(path: Path) -> None:
    run = load_run_file(path)
    assert run.name == path.stem
    header = path.read_text().splitlines()[0]
    assert header.startswith("# "), "each file opens with a comment saying what it is for"
    assert "Question:" in path.read_text()


@pytest.mark.slow
def test_quickstart_beats_raw_pixels(tmp_path: Path) -> None:
    """`raysl train` on the quickstart file: learned features beat raw pixels (92.78 % test kNN)."""
    proc = run_cli(
        "train", str(REPO / "search_spaces" / "quickstart.yaml"), "--out", str(tmp_path / "q"), "-q"
    )
    assert proc.returncode == 0, proc.stderr
    from raysl.reporting import read_jsonl

    summary = read_jsonl(tmp_path / "q" / "metrics.jsonl", "finish")[-1]
    assert summary["test/knn_top1"] > 92.78 + 2.0, summary
    assert "summary" in proc.stdout and "test/knn_top1" in proc.stdout


@pytest.mark.slow
def test_cifar10_recipe_runs_on_a_stand_in(tmp_path: Path) -> None:
    """The GPU recipe's code path (ResNet-18 CIFAR stem, LARS, probe) on CIFAR-format stand-in files."""
    write_cifar(tmp_path, "cifar10", per_batch=16, n_test=16)
    run = load_run_file(
        REPO / "search_spaces" / "simclr_cifar10.yaml",
        {
            "data.root": str(tmp_path),
            "epochs": 1,
            "data.batch_size": 32,
            "eval.probe_epochs": 5,
            "eval.knn_k": 10,
        },
    )
    recorder = Recorder()
    summary = fit(run.config, recorder)
    assert recorder.info.steps_per_epoch == 2 and recorder.info.parameters > 11e6
    for key in (
        "train/loss",
        "val/knn_top1",
        "test/knn_top1",
        "val/linear_top1",
        "test/linear_top1",
    ):
        assert key in summary
