"""Shared test helpers: small configs and a real multi-process (gloo) runner."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Small, fast settings every end-to-end test starts from (synthetic data, tiny ConvNet).
TINY = {
    "epochs": 2,
    "log_every": 1,
    "data.source": "synthetic",
    "data.batch_size": 64,
    "data.synthetic.num_samples": 256,
    "data.synthetic.image_size": 16,
    "data.synthetic.channels": 3,
    "model.width": 8,
    "model.proj_hidden_dim": 64,
    "model.proj_dim": 32,
    "eval.knn_k": 20,
    "eval.batch_size": 256,
    "optim.lr": 0.1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        torch.distributed.barrier()  # gloo can abort if ranks tear down at different times
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        torch.distributed.destroy_process_group()
    # The result is on disk. Leave without the interpreter's teardown: now and then (about 1 in
    # 50 runs here) a C++ thread left by DDP/gloo aborts the process there ("terminate called
    # without an active exception"), which would fail a test whose every rank succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn: Callable[..., Any], world: int, *args: Any) -> list[Any]:
    """Run `fn(rank, world, *args)` in `world` real processes joined by a gloo group.

    `fn` must be importable (a module-level function in a test module). Returns each rank's
    result, in rank order.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        try:
            mp.start_processes(
                _worker,
                args=(world, free_port(), fn, args, tmp),
                nprocs=world,
                start_method="spawn",
            )
        except Exception as exc:
            errors = "\n".join(p.read_text() for p in sorted(Path(tmp).glob("*.err")))
            raise AssertionError(f"a rank failed:\n{errors}") from exc
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:  # noqa: F821
    """Run `python -m raysl ARGS` as a user would (`env` added to the environment)."""
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "raysl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a run file with the TINY settings plus overrides; returns its path."""
    import yaml

    from raysl.yamlio import unflatten

    def make(name: str = "tiny", **overrides: Any) -> Path:
        flat = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "config": unflatten(flat)}))
        return path

    return make


@pytest.fixture(autouse=True)
def _no_tracking_uri_leak() -> Any:
    """A test that calls `mlflow.set_tracking_uri` in this process exports MLFLOW_TRACKING_URI;
    put the environment back so later tests (and the commands they start) use their own store."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {key: os.environ.get(key) for key in keys}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ---- refused commands (tests/test_hostile_input*.py, tests/launch/test_faults_more.py) ----
def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its bytes ("dir" for directories)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        tree[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def one_line(err: str, says: tuple[str, ...]) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def refused(tmp_path: Path, monkeypatch, capsys):
    """`refused(*args, says=(...))`: run `raysl ARGS` in tmp_path/work (this process, the real
    entry point); it must exit 2 with one line saying `says`, and change nothing under tmp_path."""
    from raysl.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def run(*args: str, says: tuple[str, ...] = ()) -> str:
        capsys.readouterr()
        before = snapshot(tmp_path)
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert info.value.code == 2, (out, err)
        assert "Traceback" not in out
        line = one_line(err, says)
        assert snapshot(tmp_path) == before, "a refused command changed the disk"
        return line

    return run
