"""Hostile and clumsy input (issue 15): every refused command exits 2 with one line naming the
file or key and the fix, prints no traceback, and creates or changes nothing on disk.

Most cases run the real entry point (`raysl.cli.main`) in this process, in a scratch working
directory whose whole tree (names and bytes) is compared before and after; the cases that
need a process of their own (dropped privileges, a checkpoint that would run code) run
`python -m raysl` as a user would.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysl.errors import ConfigError
from raysl.yamlio import unflatten
from tests.conftest import TINY, one_line, run_cli, snapshot
from tests.data.data_fakes import write_fashion, write_png

GOOD = {"name": "good", "config": unflatten({**TINY, "epochs": 1})}


def write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, str) else doc)
    return path


# ---- the file reader: encodings, compression, size, aliases (item 5) --------------------------
def _text() -> str:
    return yaml.safe_dump(GOOD, sort_keys=False)


BAD_FILES = {
    "latin1": (lambda: ("# café\n" + _text()).encode("latin-1"), ("not UTF-8", "save the file as UTF-8", ":1:")),
    "utf16": (lambda: _text().encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    "utf16-no-bom": (lambda: _text().encode("utf-16-le"), ("UTF-16", "save it as UTF-8")),
    "gzip": (lambda: gzip.compress(_text().encode()), ("gzip-compressed", "gunzip")),
    "binary": (lambda: b"name: x\n" + bytes(range(256)) * 4, ("binary file",)),
    "control-char": (lambda: b"name: x\x07\n", ("control character #x07", "remove it")),
    "self-alias-map": (lambda: b"name: x\nconfig: &c\n  data: *c\n", ("refers to the mapping or list that contains it",)),
    "self-alias-list": (lambda: b"name: x\nconfig:\n  seed: &s [1, *s]\n", ("contains it", ":3:")),
    "alias-bomb": (
        lambda: (
            "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
            + "".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
                for p, n in zip("abcde", "bcdef", strict=True)
            )
        ).encode(),
        ("expand to more than 100,000 values",),
    ),
    "two-megabytes": (lambda: _text().encode() + b"#" + b"x" * 2_000_000 + b"\n", ("2.0 MB", "1.0 MB allowed")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
@pytest.mark.parametrize("command", ["train", "config"])
def test_unreadable_run_files_are_one_line(refused, tmp_path: Path, case: str, command: str):
    make, says = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(make())
    refused(command, path, says=(f"{case}.yaml", *says))


def test_a_long_value_is_cut_in_the_message(refused, tmp_path: Path):
    path = write(tmp_path / "long.yaml", {"name": "x", "config": {"optim": {"lr": "y" * 500_000}}})
    line = refused("train", path, says=("optim.lr", "500,002 characters"))
    assert len(line) < 300


def test_unreadable_cluster_files_are_one_line(tmp_path: Path):
    from raysl.launch.cluster import load_cluster_file

    for case in ("latin1", "gzip", "utf16", "self-alias-map"):
        make, says = BAD_FILES[case]
        path = tmp_path / f"cluster-{case}.yaml"
        path.write_bytes(make())
        with pytest.raises(ConfigError) as info:
            load_cluster_file(path)
        one_line(f"error: {info.value}", (path.name, *says))


KUBERAY = Path(__file__).resolve().parents[1] / "clusters" / "kuberay-rayjob.yaml"


def _worker(doc):
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _limits(doc):
    return _worker(doc)["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize(
    ("damage", "key"),
    [
        (lambda d: d.__setitem__("spec", "oops"), "spec"),
        (lambda d: d["spec"].__setitem__("rayClusterSpec", [1, 2]), "spec.rayClusterSpec"),
        (lambda d: d["spec"]["rayClusterSpec"].__setitem__("headGroupSpec", "x"), "headGroupSpec"),
        (lambda d: d["spec"]["rayClusterSpec"].__setitem__("workerGroupSpecs", ["x"]), "workerGroupSpecs.0"),
        (lambda d: _limits(d).__setitem__("cpu", "lots"), "limits.cpu"),
        (lambda d: _limits(d).__setitem__("nvidia.com/gpu", [1]), "nvidia.com/gpu"),
        (lambda d: _worker(d).__setitem__("minReplicas", "zero"), "minReplicas"),
        (lambda d: _worker(d)["template"]["spec"].__setitem__("containers", "c"), "containers"),
        (lambda d: d.__setitem__("metadata", "m"), "metadata"),
    ],
    ids=["spec", "cluster", "head", "group", "cpu", "gpu", "replicas", "containers", "metadata"],
)  # fmt: skip
def test_malformed_kuberay_fields_are_one_line(tmp_path: Path, damage, key: str):
    from raysl.launch.cluster import load_cluster_file

    doc = yaml.safe_load(KUBERAY.read_text())
    damage(doc)
    path = write(tmp_path / "rayjob.yaml", doc)
    with pytest.raises(ConfigError) as info:
        load_cluster_file(path)
    one_line(f"error: {info.value}", ("rayjob.yaml", key, "must be"))


# ---- accepted but wrong (item 7) ----------------------------------------------------------------
def _with(**flat) -> dict:
    return {"name": "w", "config": unflatten({**TINY, **flat})}


ACCEPTED_BUT_WRONG = {
    "empty": ("", ("empty", "config:")),
    "comments-only": ("# nothing here\n# still nothing\n", ("empty (or only comments)",)),
    "name-dotdot": ({**GOOD, "name": "../../x"}, ("name", "not a path", "--out")),
    "name-absolute": ({**GOOD, "name": "/tmp/elsewhere"}, ("name", "not a path")),
    "epochs-true": (_with(epochs=True), ("epochs", "must be a number, not true")),
    "lr-inf": ("name: w\nconfig: {optim: {lr: .inf}}\n", ("optim.lr", "finite")),
    "lr-nan": ("name: w\nconfig: {optim: {lr: .nan}}\n", ("optim.lr", "finite")),
    "knn-k-digits": ("name: w\nconfig: {eval: {knn_k: 5000}}\n", ("eval.knn_k", "1293", "set eval.knn_k <= 1293")),
    "knn-k-limit": (_with(**{"eval.knn_k": 50, "data.train_limit": 30}), ("eval.knn_k", "<= 30")),
    "image-size": (_with(**{"data.image_size": 100_000}), ("data.image_size", "1024")),
    "augment-size": (_with(**{"augment.size": 5000}), ("augment.size", "1024")),
    "synthetic-size": (_with(**{"data.synthetic.image_size": 4096}), ("image_size", "256")),
    "bare-config": ({"name": "b", "epochs": 2, "data": {"source": "digits"}}, ("move these keys under `config:`", "epochs, data")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ACCEPTED_BUT_WRONG))
def test_accepted_but_wrong_is_refused(refused, tmp_path: Path, case: str):
    doc, says = ACCEPTED_BUT_WRONG[case]
    path = write(tmp_path / f"{case}.yaml", doc)
    refused("train", path, says=says)
    refused("config", path, says=says)


def test_refused_flags(refused, tmp_path: Path):
    path = write(tmp_path / "good.yaml", GOOD)
    refused("train", path, "--max-failures", "-1", says=("--max-failures", "must be >= 0"))
    refused("train", path, "--set", "eval.knn_k=10000", says=("--set", "eval.knn_k", "<= 230"))
    refused("train", path, "--set", "epochs=true", says=("--set", "epochs", "not true"))


def _study(tmp_path: Path, when: str) -> Path:
    return write(
        tmp_path / "study.yaml",
        {
            **_with(**{"loss.infonce.weight": 1.0, "loss.supcon.weight": 0.0}),
            "search": {
                "loss.supcon.weight": {"choice": [0.0, 1.0]},
                "loss.supcon.temperature": {"uniform": [0.05, 0.5], "when": when},
            },
            "tune": {"num_samples": 2, "scheduler": "none"},
        },
    )


def test_tune_refusals(refused, tmp_path: Path):
    refused(
        "tune",
        _study(tmp_path, "loss.supcon.weight == abc"),
        says=("study.yaml:", "search.loss.supcon.temperature: when:", "a number", "never holds"),
    )
    study = _study(tmp_path, "loss.supcon.weight > 0")
    (tmp_path / "not_a_study").mkdir()
    refused(
        "tune", study, "--out", tmp_path / "not_a_study", "--resume",
        says=("--resume", "no study to resume", "without --resume"),
    )  # fmt: skip
    refused("tune", study, "--resume", says=("runs/w", "no study"))  # nothing made under runs/


def test_knn_k_larger_than_an_imagefolder_bank_is_refused_before_anything(refused, tmp_path):
    """The bank of an image folder is known only once loaded: refused before the run writes."""
    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(
            tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png", rng.integers(0, 255, (3, 8, 8), np.uint8)
        )
    path = write(tmp_path / "folder.yaml", _with(**{"data.source": "imagefolder", "data.root": str(tmp_path / "imgs"), "data.batch_size": 8}))  # fmt: skip
    refused("train", path, says=("eval.knn_k", "20 neighbours", "holds 11", "<= 11"))


# ---- data errors leave nothing behind (item 8) --------------------------------------------------
def _png_bomb(path: Path) -> None:
    """A valid PNG header claiming 20000 x 20000 pixels (PIL refuses it at open)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )  # fmt: skip


def _folder(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(root / f"c{i % 2}" / f"{i}.png", rng.integers(0, 255, (3, 8, 8), np.uint8))
    return root


def _parquet(root: Path) -> Path:
    from raysl.config import DataConfig, SyntheticConfig
    from raysl.data import export_parquet

    export_parquet(DataConfig(source="synthetic", synthetic=SyntheticConfig(num_samples=40, image_size=8)), root)  # fmt: skip
    return root


def _damage_first(root: Path, pattern: str, data: bytes | None = None, keep: int = 0) -> Path:
    target = sorted(root.rglob(pattern))[0]
    target.write_bytes(data if data is not None else target.read_bytes()[:keep])
    return root


DATA_ERRORS = {
    "missing-root": ("fashion_mnist", lambda t: t / "nowhere", ("does not exist",)),
    "root-is-a-file": ("imagefolder", lambda t: write(t / "file.txt", "x"), ("not a directory",)),
    "idx-truncated": ("fashion_mnist", lambda t: _damage_first(write_fashion(t / "f", gz=False) and t / "f", "train-images*", keep=500), ("truncated",)),
    "idx-bad-magic": ("fashion_mnist", lambda t: _damage_first(write_fashion(t / "f", gz=False) and t / "f", "train-images*", b"\x12\x34\x56\x78" + bytes(64)), ("magic number 12345678",)),
    "image-corrupt": ("imagefolder", lambda t: _damage_first(_folder(t / "i"), "*.png", b"not a png"), ("cannot decode image",)),
    "folder-empty": ("imagefolder", lambda t: (t / "e").mkdir() or t / "e", ("directory is empty",)),
    "folder-no-images": ("imagefolder", lambda t: write(t / "n" / "c0" / "readme.txt", "x").parents[1], ("no class subdirectories",)),
    "parquet-truncated": ("parquet", lambda t: _damage_first(_parquet(t / "p"), "*.parquet", keep=100), ("not a readable Parquet shard",)),
    "png-bomb": ("imagefolder", lambda t: (_folder(t / "b"), _png_bomb(t / "b" / "c0" / "huge.png"))[0], ("huge.png", "decompression bombs")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DATA_ERRORS))
def test_data_errors_leave_no_run_directory(refused, tmp_path: Path, case: str):
    source, make, says = DATA_ERRORS[case]
    root = make(tmp_path)
    extra = {"data.image_size": 8} if source == "imagefolder" else {}
    path = write(tmp_path / "run.yaml", _with(**{"data.source": source, "data.root": str(root), "data.batch_size": 4, "eval.knn_k": 2, **extra}))  # fmt: skip
    refused("train", path, says=("data.root", "fix:", *says))
    assert not (tmp_path / "work" / "runs").exists()


def test_an_unreadable_data_root_is_one_line(tmp_path: Path):
    """A real EACCES: as root, the command runs without the capability to bypass permissions."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be denied here")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    root = _folder(tmp_path / "locked")
    root.chmod(0)
    try:
        path = write(tmp_path / "run.yaml", _with(**{"data.source": "imagefolder", "data.root": str(root)}))  # fmt: skip
        before = snapshot(tmp_path)
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "raysl", "train", str(path)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        one_line(proc.stderr, ("locked", "permission denied", "chmod"))
        assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()
    finally:
        root.chmod(0o755)


# ---- checkpoints on --resume (items 1, 2, 3) ----------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A real two-epoch run (two checkpoints) made by the CLI once for this module."""
    base = tmp_path_factory.mktemp("finished")
    config = write(base / "run.yaml", {"name": "run", "config": unflatten({**TINY, "epochs": 2})})
    proc = run_cli("train", str(config), "--out", str(base / "run"), "-q", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return config, base / "run"


def _copy(finished_run, tmp_path: Path) -> tuple[Path, Path]:
    config, run = finished_run
    shutil.copytree(run, tmp_path / "run")
    return config, tmp_path / "run"


def test_a_refused_resume_changes_nothing(refused, finished_run, tmp_path: Path):
    config, out = _copy(finished_run, tmp_path)
    refused(
        "train", config, "--out", out, "--resume", "--set", "optim.lr=0.5",
        says=("--resume", "different config", "optim.lr: 0.1 -> 0.5"),
    )  # fmt: skip
    # on Ray Train workers the same check runs before Ray starts, from the checkpoint's meta.json
    refused(
        "train", config, "--out", out, "--resume", "--workers", "1", "--set", "optim.lr=0.5",
        says=("--resume", "different config", "optim.lr: 0.1 -> 0.5"),
    )  # fmt: skip
    (out / "checkpoints" / "epoch_0002" / "state.pt").write_bytes(b"")
    (out / "checkpoints" / "epoch_0001" / "state.pt").write_bytes(b"\x00garbage")
    refused(
        "train", config, "--out", out, "--resume",
        says=("none of the 2 checkpoint(s) can be read", "empty (0 bytes)", "another --out"),
    )  # fmt: skip


def test_a_crafted_checkpoint_runs_nothing(finished_run, tmp_path: Path):
    config, out = _copy(finished_run, tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = out / "checkpoints" / "epoch_0002" / "state.pt"
    state.write_bytes(pickle.dumps({"epoch": 2, "model": Payload()}, protocol=2))
    before = snapshot(tmp_path)
    proc = run_cli("train", str(config), "--out", str(out), "--resume", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    one_line(
        proc.stderr, ("epoch_0002/state.pt", "refused", "posix.system", "nothing in it was run")
    )
    assert not marker.exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_broken_newest_checkpoint_resumes_from_the_one_before(
    finished_run, tmp_path: Path, damage: str
):
    """What used to print "aborted" with exit 130 (0 bytes) or PyTorch's traceback (truncated);
    random bytes and a `{}` state are covered in tests/test_checkpoint.py."""
    import torch

    config, out = _copy(finished_run, tmp_path)
    state = out / "checkpoints" / "epoch_0002" / "state.pt"
    data = state.read_bytes()
    state.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    proc = run_cli("train", str(config), "--out", str(out), "--resume", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # not 130 ("aborted"), not a traceback
    assert "Traceback" not in proc.stderr
    note = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "epoch_0002/state.pt" in note[0] and "epoch_0001" in note[0]
    assert "resuming after epoch 1" in proc.stdout
    torch.load(state, weights_only=True)  # epoch 2 is written again, loadable safely
