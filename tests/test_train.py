"""The shared loop end to end: reports, torchrun equivalence, kill + resume, NaN stops, no Ray."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from raysl.config import Config
from raysl.errors import NonFiniteLossError
from raysl.reporting import Recorder, read_jsonl
from raysl.train import fit
from tests.conftest import REPO, TINY, free_port, run_cli


def test_core_does_not_import_ray() -> None:
    code = (
        "import sys, raysl, raysl.train, raysl.losses, raysl.models, raysl.data, raysl.augment, raysl.evaluate, raysl.cli.train\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_fit_reports_every_epoch_with_finite_metrics(tmp_path: Path) -> None:
    recorder = Recorder()
    summary = fit(Config().override(TINY), recorder, checkpoint_dir=tmp_path)
    assert [m["epoch"] for m in recorder.epochs] == [1.0, 2.0]
    for metrics in recorder.epochs:
        for key in ("train/loss", "train/loss/infonce", "lr", "train/throughput", "val/knn_top1"):
            assert math.isfinite(metrics[key]), key
    assert recorder.checkpoints[-1] == tmp_path / "epoch_0002"
    assert 0 <= summary["test/knn_top1"] <= 100 and recorder.summary == summary
    assert len(recorder.steps) == 2 * recorder.info.steps_per_epoch  # log_every=1


def test_non_finite_loss_stops_the_run_and_is_reported() -> None:
    recorder = Recorder()
    cfg = Config().override({**TINY, "optim.lr": 1e30, "optim.name": "sgd"})
    with pytest.raises(NonFiniteLossError, match="not finite"):
        fit(cfg, recorder)
    assert isinstance(recorder.error, NonFiniteLossError)
    assert not recorder.epochs  # never reported as if nothing happened


def _steps(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl", "step")]


@pytest.mark.slow
@pytest.mark.dist
def test_torchrun_two_processes_equal_one_process(tiny_config, tmp_path: Path) -> None:
    """The same global batch on 2 gloo processes gives the same per-step losses as 1 process."""
    config = tiny_config(epochs=1, eval__test=False)
    single = run_cli("train", str(config), "--out", str(tmp_path / "single"), "-q")
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    double = subprocess.run(
        [*torchrun, "-m", "raysl", "train", str(config), "--out", str(tmp_path / "double"), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _steps(tmp_path / "single"), _steps(tmp_path / "double")
    assert len(one) == len(two) >= 3
    assert two == pytest.approx(one, rel=1e-5, abs=1e-5)  # every step, not only the first
    start = read_jsonl(tmp_path / "double" / "metrics.jsonl", "start")[0]
    assert start["world_size"] == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_config, tmp_path: Path) -> None:
    """SIGKILL a run after its first checkpoint; --resume ends where an uninterrupted run ends."""
    config = tiny_config(epochs=4, data__synthetic__num_samples=1024, eval__every=1)
    reference = run_cli("train", str(config), "--out", str(tmp_path / "ref"), "-q")
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysl", "train", str(config), "--out", str(out), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "epoch_0001").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("epoch_"))
    assert done and "epoch_0004" not in done, f"the run finished before it was killed: {done}"

    again = run_cli("train", str(config), "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr  # nothing overwritten by accident
    resumed = run_cli("train", str(config), "--out", str(out), "--resume", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout

    want = read_jsonl(tmp_path / "ref" / "metrics.jsonl", "finish")[-1]
    got = read_jsonl(out / "metrics.jsonl", "finish")[-1]
    for key in ("train/loss", "val/knn_top1", "test/knn_top1"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key
    epochs = [r["epoch"] for r in read_jsonl(out / "metrics.jsonl", "epoch")]
    assert epochs[-1] == 4 and sorted(set(epochs)) == [1, 2, 3, 4]


def test_resume_with_a_different_config_is_refused(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(epochs=1)
    assert run_cli("train", str(config), "--out", str(tmp_path / "r"), "-q").returncode == 0
    changed = run_cli(
        "train", str(config), "--out", str(tmp_path / "r"), "--resume", "--set", "optim.lr=0.5"
    )
    assert (
        changed.returncode == 2
        and "optim.lr" in changed.stderr
        and "different config" in changed.stderr
    )


def test_a_checkpoint_older_than_a_config_key_resumes(tmp_path: Path) -> None:
    """A checkpoint saved before `loss.infonce.symmetric` existed resumes when the key has its
    default; a checkpoint whose saved value differs is still refused before anything changes."""
    from raysl.checkpoint import load_checkpoint
    from raysl.errors import ConfigError

    cfg = Config().override({**TINY, "epochs": 1})
    fit(cfg, Recorder(), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / "epoch_0001")
    older = {k: v for k, v in state["config"].items() if k != "loss.infonce.symmetric"}
    recorder = Recorder()
    fit(cfg.override({"epochs": 2}), recorder, resume_from={**state, "config": older})
    assert [m["epoch"] for m in recorder.epochs] == [2.0]
    other = {**state["config"], "loss.infonce.symmetric": False}
    with pytest.raises(ConfigError, match=r"loss\.infonce\.symmetric: False -> True"):
        fit(cfg.override({"epochs": 2}), Recorder(), resume_from={**state, "config": other})


def test_linear_probe_and_test_metrics(tmp_path: Path) -> None:
    summary = fit(
        Config().override(
            {**TINY, "epochs": 1, "eval.linear_probe": True, "eval.probe_epochs": 20}
        ),
        Recorder(),
    )
    for key in ("val/linear_top1", "test/linear_top1", "test/knn_top1"):
        assert 0 <= summary[key] <= 100
    assert torch.get_num_threads() >= 1


@pytest.mark.slow
def test_compiled_loop_matches_eager() -> None:
    eager = fit(Config().override({**TINY, "epochs": 1}), Recorder())
    compiled = fit(Config().override({**TINY, "epochs": 1, "compile": True}), Recorder())
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-4)
    assert compiled["val/knn_top1"] == pytest.approx(eager["val/knn_top1"], abs=1e-6)


def test_augmentation_params_reach_augment_on_the_cpu(monkeypatch) -> None:
    """Regression (CUDA path): the loop copied each step's augmentation parameters to the
    training device and `Augment` copied them back, two blocking copies per step on a GPU
    (the CPU then waits for the GPU's queue). They must reach `Augment` untouched, on the CPU."""
    from raysl.augment import pipeline

    moved, seen = [], []
    to, call = pipeline.AugParams.to, pipeline.Augment.__call__

    def spy_to(self, device, non_blocking=False):
        moved.append((sys._getframe(1).f_globals["__name__"], str(device)))
        return to(self, device, non_blocking)

    def spy_call(self, images, params):
        seen.append(params.flip.device.type)
        return call(self, images, params)

    monkeypatch.setattr(pipeline.AugParams, "to", spy_to)
    monkeypatch.setattr(pipeline.Augment, "__call__", spy_call)
    fit(Config().override({**TINY, "epochs": 1}))
    assert seen and set(seen) == {"cpu"}
    assert [m for m in moved if m[0] in ("raysl.train", "raysl.train_step")] == []
