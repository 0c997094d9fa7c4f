"""Every script in benchmarks/ runs, as a user would run it, in its --smoke mode (gpu_check.py
in its CPU rehearsal, --dry-run), so no benchmark rots between the runs that measure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCH = REPO / "benchmarks"

# script -> (arguments, a line it must print, marks); slow: starts Ray or process groups
SCRIPTS: dict[str, tuple[list[str], str, list]] = {
    "bench_augment.py": (["--smoke"], "raysl/torchvision", []),
    "bench_loop.py": (["--smoke"], "ratio raysl/bare", []),
    "bench_losses.py": (["--smoke"], "mean_shift (CMSF 2q)", []),
    "bench_fashion_mnist.py": (
        ["--smoke"], "T = 0.1: kNN k=200 | kNN k=20 | linear probe", [],
    ),
    "bench_tune.py": (["--smoke"], "study wall / sum of fit time", [pytest.mark.slow, pytest.mark.ray]),
    "bench_search.py": (
        ["--smoke"], "budget fraction to reach random's final best", [pytest.mark.slow, pytest.mark.ray],
    ),
    "bench_studies.py": (["--smoke"], "| study winner |", [pytest.mark.slow, pytest.mark.ray]),
    "bench_scaling.py": (
        ["--smoke"], "bytes sent per rank", [pytest.mark.slow, pytest.mark.ray, pytest.mark.dist],
    ),
}  # fmt: skip
# optional references of the `bench` extra: when absent, the script names what it skipped
OPTIONAL = {
    "bench_augment.py": [("kornia", "kornia       skipped: No module named 'kornia'")],
    "bench_loop.py": [("kornia", "kornia       skipped: No module named 'kornia'")],
    "bench_losses.py": [
        ("lightly", "reference skipped: No module named 'lightly'"),
        ("pytorch_metric_learning", "reference skipped: No module named 'pytorch_metric_learning'"),
    ],
}


def _run(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    env.pop("OUT", None)  # gpu_check writes to $OUT when set; the tests name --out
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_every_benchmark_script_is_run_here() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    assert scripts == {*SCRIPTS, "gpu_check.py"}, "add the new script's --smoke run to SCRIPTS"


@pytest.mark.parametrize(
    "script", [pytest.param(name, marks=marks) for name, (*_, marks) in SCRIPTS.items()]
)
def test_smoke(script: str) -> None:
    args, expected, _ = SCRIPTS[script]
    result = _run(str(BENCH / script), *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert expected in result.stdout
    for module, line in OPTIONAL.get(script, []):  # the CI installs only .[test]: said, no crash
        if importlib.util.find_spec(module) is None:
            assert line in result.stdout, result.stdout


def test_bench_loop_times_a_previous_version_with_the_same_code() -> None:
    """(3) against a git revision: its raysl, checked out in a worktree, timed by this
    bench_loop; the worktree is removed afterwards."""
    result = _run(
        str(BENCH / "bench_loop.py"),
        "--smoke",
        "--skip-loop",
        "--skip-augment",
        "--against",
        "HEAD",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for figure in ("training img/s", "epoch img/s (val kNN included)", "final report, s"):
        assert f"  {figure}:" in result.stdout
    assert result.stdout.count("speed-up default/raysl HEAD") == 3, result.stdout
    worktrees = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True
    )
    assert "raysl-against-" not in worktrees.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_gpu_check_dry_run_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["parts"]
    assert list(parts) == [
        "env", "precision", "fit", "augment", "losses", "neighbours", "ray", "fit_compile",
    ]  # fmt: skip
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(parts, "ok")
    variants = {r["variant"]: r for r in parts["precision"]["rows"]}
    assert list(variants) == ["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]
    assert all(
        r["img_s"] > 0 and r["s_per_epoch"] == pytest.approx(50_000 / r["img_s"])
        for r in variants.values()
    )
    fit = parts["fit"]["rows"]
    assert [r["loop"] for r in fit] == ["raysl fit()", "bare", "ratio fit/bare"]
    assert fit[2]["median"] == pytest.approx(fit[0]["img_s"] / fit[1]["img_s"])
    terms = {(r["term"], r["bank"]) for r in parts["losses"]["rows"]}
    assert len(terms) == 20 and all("ms" in r for r in parts["losses"]["rows"])
    assert {r["chunk"] for r in parts["neighbours"]["rows"]} == {1024, 4096}
    doctor, study = parts["ray"]["rows"]
    assert doctor["verdict"] == "no GPU" and doctor["gpu_findings"] == []
    # the fractional study: 4 trials at 0.5 CPU each on this machine, all in MLflow, concurrent
    assert study["resources"] == {"cpu": 0.5}
    assert study["trials_in_mlflow"] == 4 and study["max_concurrent_trials"] >= 2
    assert [r["compile"] for r in parts["fit_compile"]["rows"]] == [False, True]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == sum(len(p["rows"]) for p in parts.values())
    table = (out / "table.md").read_text()
    assert "## precision: ok" in table and "A100 (dkobak/simclr-cifar10) 11.9 s" in table


def test_gpu_check_time_limit_keeps_the_other_parts(tmp_path: Path) -> None:
    """A part past its limit is stopped and recorded as a timeout; the next part still runs,
    the summary is written, and the exit status says not everything was measured."""
    out = tmp_path / "out"
    result = _run(
        str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out),
        "--parts", "precision,env", "--limit", "precision=2",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    parts = json.loads((out / "summary.json").read_text())["parts"]
    assert parts["precision"]["status"] == "timeout" and parts["env"]["status"] == "ok"
    assert parts["env"]["rows"][0]["device"] == "cpu"
    assert "not ok: precision" in result.stdout


def test_gpu_check_refuses_bad_input_without_a_traceback(tmp_path: Path) -> None:
    for args in (["--parts", "precison"], ["--limit", "fit=soon"]):
        result = _run(str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(tmp_path), *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "unknown part or bad --limit" in result.stderr
    if not _cuda():
        result = _run(str(BENCH / "gpu_check.py"), "--out", str(tmp_path))
        assert result.returncode == 2 and "no CUDA device is visible" in result.stderr
    assert not (tmp_path / "summary.json").exists()  # nothing measured, nothing written


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_gpu_busy_sampler_reads_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    """The busy % and the processes on the GPU come from nvidia-smi's CSV output; here a
    stand-in `nvidia-smi` on PATH prints what the real one prints for those queries."""
    sys.path.insert(0, str(BENCH))
    from gpu_parts import GpuBusy

    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        '#!/bin/sh\ncase "$*" in\n  *utilization.gpu*) echo 87 ;;\n'
        "  *compute-apps*) printf '4101\\n4102\\n' ;;\nesac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with GpuBusy(True, apps=True) as busy:
        deadline = time.monotonic() + 10
        while len(busy.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    result = busy.result()
    assert result is not None and result["gpu_busy_samples"] >= 3
    assert result["gpu_busy_mean"] == 87 and result["gpu_processes_max"] == 2
    assert GpuBusy(False).start().result() is None  # no GPU: no numbers, not zeros


def test_search_curves_on_a_hand_made_table() -> None:
    """bench_search's anytime curves, final bests and budget fractions against values worked
    out by hand: results ordered by arrival (ties: trial, then epoch), cut at the budget,
    paired with random search's final best of the same seed."""
    import pandas as pd

    sys.path.insert(0, str(BENCH))
    import search_curves as sc

    rows = [  # method, seed, trial, epoch, value, timestamp; budget 4 trial-epochs each
        ("random", 0, 1, 1, 60.0, 20), ("random", 0, 0, 1, 50.0, 10), ("random", 0, 0, 2, 55.0, 30),
        ("random", 0, 1, 2, 70.0, 40), ("random", 0, 2, 1, 80.0, 50),  # 5th: past the budget
        ("random", 1, 0, 1, 60.0, 10), ("random", 1, 0, 2, 62.0, 20),  # spent 2 of 4
        ("tpe_asha", 0, 0, 1, 65.0, 5), ("tpe_asha", 0, 1, 1, 72.0, 6),
        ("tpe_asha", 0, 0, 2, 68.0, 6),  # same ms as trial 1's: trial 0 counts first
        ("tpe_asha", 1, 0, 1, 61.0, 1), ("tpe_asha", 1, 1, 1, 63.0, 2),
        ("pbt", 0, 0, 1, 40.0, 1), ("pbt", 0, 1, 1, 45.0, 2), ("pbt", 0, 0, 2, 50.0, 3),
        ("pbt", 0, 1, 2, 55.0, 4), ("pbt", 1, 0, 1, 70.0, 1),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["method", "seed", "trial", "epoch", sc.METRIC, "timestamp"])
    table = sc.with_spent(table.assign(budget=4))
    study = table[(table["method"] == "tpe_asha") & (table["seed"] == 0)]
    assert study[["trial", "epoch", "spent"]].values.tolist() == [[0, 1, 1], [0, 2, 2], [1, 1, 3]]
    random0 = table[(table["method"] == "random") & (table["seed"] == 0)]
    assert sc.curve(random0, 4).tolist() == [50.0, 60.0, 60.0, 70.0]  # 80 came after the budget
    assert sc.curve(study, 4).tolist() == [65.0, 68.0, 72.0, 72.0]
    random1 = table[(table["method"] == "random") & (table["seed"] == 1)]
    assert sc.curve(random1, 4).tolist() == [60.0, 62.0, 62.0, 62.0]
    rows_by = {r["method"]: r for r in sc.summarise(table)}
    assert list(rows_by) == ["random", "tpe_asha", "pbt"]  # the order they came in
    random, asha, pbt = rows_by["random"], rows_by["tpe_asha"], rows_by["pbt"]
    assert random["final"] == [70.0, 62.0] and random["fraction"] == [1.0, 0.5]
    assert random["trials"] == [2, 1] and random["spent"] == [4, 2]
    assert asha["final"] == [72.0, 63.0] and asha["fraction"] == [0.75, 0.5]  # 70 at 3, 62 at 2
    assert pbt["final"] == [55.0, 70.0] and pbt["fraction"] == [None, 0.25]
    lines = sc.table_lines(list(rows_by.values()))
    assert "66.00 ± 5.66 %" in lines[1] and "0.75 (1.00, 0.50)" in lines[1] and "2/4" in lines[1]
    assert "0.62 (0.75, 0.50)" in lines[2]
    assert "0.25, reached in 1 of 2 seeds (—, 0.25)" in lines[3]
    assert sc.fraction_text([None, None]) == "not reached (—, —)"
    assert not any("test kNN" in line for line in lines)  # no winner_test column: no line
    # studies without a test evaluation log NaN for their winner: no line, no crash
    untested = sc.summarise(table.assign(winner_test=float("nan")))
    assert not any("test kNN" in line for line in sc.table_lines(untested))
