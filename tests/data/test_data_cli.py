"""`raysl data info` / `raysl data export` as a user runs them, and no Ray on import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from raysl.config import DataConfig
from raysl.data import load_splits


def raysl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raysl", *args], capture_output=True, text=True, timeout=120
    )


def test_data_help():
    result = raysl("data", "--help")
    assert result.returncode == 0 and "export" in result.stdout and "info" in result.stdout


def test_export_then_info_of_the_export(tmp_path: Path):
    out = tmp_path / "out"
    sets = ["--set", "data.synthetic.num_samples=64", "--set", "data.synthetic.image_size=8"]
    result = raysl(
        "data", "export", "synthetic", str(out), *sets, "--shard-size", "50", "--seed", "2"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("wrote ") and "(50 rows)" in lines[0]
    assert lines[-1].startswith(
        "exported synthetic: 64 train + 16 test images of 3x8x8, 10 classes, in 3 shards"
    )
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]

    again = raysl("data", "export", "synthetic", str(out), *sets)
    assert again.returncode == 2 and "--force" in again.stderr
    forced = raysl("data", "export", "synthetic", str(out), *sets, "--seed", "2", "--force")
    assert forced.returncode == 0, forced.stderr

    info = raysl("data", "info", "parquet", "--root", str(out), "--seed", "2")
    assert info.returncode == 0, info.stderr
    assert "train" in info.stdout and "3 x 8 x 8" in info.stdout and "classes: 10" in info.stdout
    splits = load_splits(DataConfig(source="parquet", root=str(out)), seed=2)
    assert f"{splits.mean[0]:.4f}" in info.stdout


def test_bad_path_exits_2_with_one_line(tmp_path: Path):
    result = raysl("data", "info", "fashion_mnist", "--root", str(tmp_path / "missing"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and "data.root" in result.stderr
    bad_key = raysl("data", "info", "digits", "--set", "data.val_fraction=2")
    assert bad_key.returncode == 2 and "data.val_fraction" in bad_key.stderr


def test_importing_raysl_data_never_imports_ray():
    code = (
        "import sys, raysl.data, raysl.data.splits, raysl.data.parquet, raysl.cli.data;"
        "from raysl.config import DataConfig;"
        "raysl.data.load_splits(DataConfig(source='synthetic'), 0);"
        "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
