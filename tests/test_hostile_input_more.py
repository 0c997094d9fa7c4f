"""More hostile input (issue 16): addresses where no cluster answers, configs that cannot learn,
checks that ran too late, disk and output faults, unsafe cluster files, size limits, resume.

Same standard as tests/test_hostile_input.py (whose helpers this reuses): exit 2 with
one line naming the file or key and the fix, no traceback, nothing created or changed under the
test's directory. Cases that need a process of their own (a probe of an address, a tmpfs that
fills up, dropped privileges) run `python -m raysl` as a user would. The cases that start Ray
are in tests/launch/test_faults_more.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from raysl.cli import main
from tests.conftest import REPO, one_line, run_cli, snapshot
from tests.test_hostile_input import GOOD, _with, write

ONPREM = REPO / "clusters" / "onprem.yaml"


def _cli(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return run_cli(*map(str, args), cwd=cwd, **kwargs)


def _study(tmp_path: Path) -> Path:
    doc = {
        **_with(**{"loss.infonce.weight": 1.0}),
        "name": "s",
        "search": {"optim.lr": {"loguniform": [0.01, 1.0]}},
        "tune": {"num_samples": 2, "scheduler": "none"},
    }
    return write(tmp_path / "study.yaml", doc)


# ---- item 1: --address with no cluster behind it ----------------------------------------------
@pytest.fixture
def silent_port():
    """A TCP port where something accepts connections but never speaks (not a Ray GCS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("command", "listener"),
    [("train", "nothing"), ("tune", "nothing"), ("doctor", "nothing"), ("train", "not-ray")],
)
def test_an_address_where_no_cluster_answers_is_one_line_in_seconds(
    tmp_path: Path, command: str, listener: str, request
) -> None:
    """Nothing listening, or a server that accepts the connection and never answers as a Ray
    GCS does (the first ray.init would retry against for minutes)."""
    address = _closed_port() if listener == "nothing" else request.getfixturevalue("silent_port")
    run = write(tmp_path / "run.yaml", GOOD)
    args = {
        "train": ["train", run, "--workers", "1", "--address", address],
        "tune": ["tune", _study(tmp_path), "--address", address],
        "doctor": ["doctor", ONPREM, "--address", address],
    }[command]
    before = snapshot(tmp_path)
    started = time.monotonic()
    proc = _cli(*args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_line(proc.stderr, ("--address", f"no Ray cluster answers at {address}"))
    assert "ray start --head" in line and "fix --address" in line
    assert time.monotonic() - started < 30  # not Ray's minutes of retries
    assert snapshot(tmp_path) == before  # no config.yaml, raysl.log, runs/, mlflow.db


def test_address_forms_that_are_not_ray_addresses() -> None:
    from raysl.errors import ConfigError
    from raysl.launch.address import check_address

    for bad, says in [
        ("http://head:8265", "is not a Ray address"),
        ("head", "is not HOST:PORT"),
        ("head:notaport", "is not HOST:PORT"),
        ("no-such-host.invalid:6379", "cannot resolve"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_address(bad, timeout=2)
        one_line(f"error: {info.value}", ("--address", says))
    check_address(None)
    check_address("local")


# ---- item 3: configs that cannot learn ---------------------------------------------------------
CANNOT_LEARN = {
    "infonce-one-view": ({"augment.views": 1}, ("augment.views", "loss.infonce needs at least 2 views", "augment.views: 2")),
    "similarity-one-view": ({"augment.views": 1, "loss.infonce.weight": 0, "loss.similarity.weight": 1}, ("augment.views", "loss.similarity")),
    "icc-one-view": ({"augment.views": 1, "loss.infonce.weight": 0, "loss.icc.weight": 1}, ("augment.views", "loss.icc")),
    "mean-shift-k-over-bank": ({"loss.infonce.weight": 0, "loss.mean_shift.weight": 1, "loss.mean_shift.k": 100, "loss.mean_shift.bank_size": 50}, ("loss.mean_shift.k", "100 neighbours", "at most 64 rows", "set k <= 64")),
    "mining-one-view-no-mining": ({"augment.views": 1, "loss.infonce.weight": 0, "loss.mining.weight": 1, "loss.mining.k_pos": 0}, ("augment.views", "loss.mining", "k_pos is 0")),
    "knn-k-over-bank": ({"eval.knn_k": [20, 300]}, ("eval.knn_k", "300 neighbours", "<= 230")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CANNOT_LEARN))
def test_a_config_that_cannot_learn_is_refused_naming_the_key(refused, tmp_path: Path, case: str):
    flat, says = CANNOT_LEARN[case]
    path = write(tmp_path / f"{case}.yaml", _with(**flat))
    line = refused("train", path, says=says)
    assert f"{case}.yaml:" in line  # the file and the line of the key (or its section)
    refused("config", path, says=says)


def test_what_can_learn_with_one_view_is_accepted(tmp_path: Path, capsys) -> None:
    """SupCon-S and SelfCon-S are one-view methods: not refused by the views check."""
    for term in ("supcon", "selfcon"):
        flat = {"augment.views": 1, "loss.infonce.weight": 0, f"loss.{term}.weight": 1}
        main(["config", str(write(tmp_path / f"{term}.yaml", _with(**flat)))])
    assert "loss.selfcon.weight" in capsys.readouterr().out


def test_the_backbone_stage_counts_the_config_checks_are_the_built_ones() -> None:
    from raysl.config_checks import BACKBONE_STAGES
    from raysl.models.backbones import build_backbone

    for name, stages in BACKBONE_STAGES.items():
        assert len(build_backbone(name, 3, 32, width=8).stages) == stages, name


# ---- item 4: checks that used to run after runs/<name>/ was written ----------------------------
TOO_LATE = {
    "quantile-band-inverted": ({"loss.infonce.weight": 0, "loss.mining.weight": 1, "loss.mining.band": "quantile", "loss.mining.q_lo": 0.9, "loss.mining.q_hi": 0.2}, ("loss.mining.q_lo", "must be below q_hi")),
    "quantile-band-empty": ({"loss.infonce.weight": 0, "loss.mining.weight": 1, "loss.mining.band": "quantile", "loss.mining.q_lo": 0.5, "loss.mining.q_hi": 0.5}, ("loss.mining.q_lo", "keep none")),
    "selfcon-exit-after-last-stage": ({"loss.infonce.weight": 0, "loss.selfcon.weight": 1, "loss.selfcon.exits": [2, 4]}, ("loss.selfcon.exits", "stages 1..3", "[2, 4]")),
    "seed-2-64": ({"seed": 2**64}, ("seed", "less than 18446744073709551616")),
    "seed-negative": ({"seed": -(2**63) - 1}, ("seed", "greater than or equal to 0")),
    "image-size-1": ({"data.image_size": 1}, ("data.image_size", "greater than or equal to 8")),
    "augment-size-1": ({"augment.size": 1}, ("augment.size", "greater than or equal to 8")),
    "root-5000-characters": ({"data.source": "fashion_mnist", "data.root": "/" + "r" * 5000}, ("data.root", "5,001 bytes", "at most 4,096", "5,003 characters")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TOO_LATE))
def test_cross_argument_problems_are_refused_before_anything_is_written(
    refused, tmp_path: Path, case: str
):
    flat, says = TOO_LATE[case]
    path = write(tmp_path / f"{case}.yaml", _with(**flat))
    line = refused("train", path, says=says)
    assert len(line) < 600, line  # a 5,000-character path is cut, not printed
    assert not (tmp_path / "work" / "runs").exists()


# ---- item 5: disk and output faults -------------------------------------------------------------
def test_outputs_that_cannot_be_written_are_refused_before_anything_starts(refused, tmp_path: Path):
    run = write(tmp_path / "run.yaml", GOOD)
    study = _study(tmp_path)
    (tmp_path / "a_file").write_text("x")
    refused("train", run, "--out", tmp_path / "a_file" / "run", says=("--out", "a_file is a file", "cannot be created"))  # fmt: skip
    refused("train", run, "--out", tmp_path / "a_file", says=("--out", "a_file' is a file", "raysl train --help"))  # fmt: skip
    (tmp_path / "work" / "runs").write_text("not a directory")
    refused("train", run, says=("--out", "runs is a file", "runs/good"))
    refused("tune", study, says=("--out", "runs is a file"))
    (tmp_path / "work" / "runs").unlink()
    (tmp_path / "work" / "mlflow.db").write_text("this is not a database\n")
    refused("tune", study, says=("mlflow.db", "is not an SQLite database", "move it away"))
    refused("report", "s", says=("mlflow.db", "is not an SQLite database"))
    (tmp_path / "work" / "mlflow.db").unlink()
    db = tmp_path / "other.db"
    refused("tune", study, "--tracking-uri", "ftp://host/mlruns", says=("--tracking-uri", "scheme ftp://", "sqlite:///"))  # fmt: skip
    refused("tune", study, "--tracking-uri", f"sqlite:///{db}", "--storage", "foo://bucket/x", says=("--storage", "unknown scheme foo://", "s3://"))  # fmt: skip
    refused("train", run, "--workers", "1", "--storage", "foo://bucket/x", says=("--storage", "unknown scheme foo://"))  # fmt: skip


def _unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to write anywhere (or [] as a user)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be denied here")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("command", ["train", "export"])
def test_an_unwritable_output_directory_is_one_line(tmp_path: Path, command: str) -> None:
    """A real EACCES: the directory is read-only and the command runs without root's override."""
    locked = tmp_path / "locked"
    locked.mkdir()
    run = write(tmp_path / "run.yaml", GOOD)
    args = {
        "train": ["train", str(run), "--out", str(locked / "run")],
        "export": ["data", "export", "synthetic", str(locked / "shards")],
    }[command]
    locked.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        proc = subprocess.run(
            [*_unprivileged(), sys.executable, "-m", "raysl", *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        key = "--out" if command == "train" else "OUT_DIR"
        one_line(proc.stderr, (key, "locked is not writable", "permission denied"))
        assert snapshot(tmp_path) == before
    finally:
        locked.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 420 kB tmpfs mounted here by the test: one checkpoint of the TINY model fits, two do not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=420k", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path: Path, small_disk):
    run = write(tmp_path / "run.yaml", {"name": "full", "config": yaml.safe_load(yaml.safe_dump(GOOD["config"]))})  # fmt: skip
    out = small_disk / "run"
    proc = _cli("train", run, "--out", out, "-q", "--set", "epochs=3", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_line(proc.stderr, ("cannot write the run", "no space left on device"))
    assert "epoch_0001" in line and f"raysl train {run} --out {out} --resume" in line
    assert "failed:" not in proc.stdout and "Traceback" not in proc.stdout
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["epoch_0001"], checkpoints  # no half-written epoch, no temp dir
    import torch

    state = torch.load(out / "checkpoints" / "epoch_0001" / "state.pt", weights_only=True)
    assert state["epoch"] == 1  # the previous checkpoint is intact


# ---- item 6: the doctor ---------------------------------------------------------------------------
def _cluster(tmp_path: Path, name: str, change) -> Path:
    doc = yaml.safe_load(ONPREM.read_text())
    change(doc)
    return write(tmp_path / f"{name}.yaml", doc)


UNSAFE = {
    "dashboard-ipv6": (lambda d: d["head_start_ray_commands"].append("ray start --head --dashboard-host=::"), "exposes a server on every interface"),
    "mlflow-ipv6-brackets": (lambda d: d["head_start_ray_commands"].append("mlflow server --host [::] --port 5000"), "exposes a server on every interface"),
    "mlflow-password": (lambda d: d["setup_commands"].append("export MLFLOW_TRACKING_PASSWORD=hunter2"), "MLFLOW_TRACKING_PASSWORD is set to a literal value"),
    "wandb-key-env": (lambda d: d["setup_commands"].append("export WANDB_API_KEY=0123456789abcdef0123456789abcdef01234567"), "WANDB_API_KEY is set to a literal value"),
    "wandb-login": (lambda d: d["setup_commands"].append("wandb login 0123456789abcdef0123456789abcdef01234567"), "a credential given on a command line"),
    "hf-token": (lambda d: d["setup_commands"].append("HF_TOKEN=hf_abc python train.py"), "HF_TOKEN is set to a literal value"),
    "hf-hub-token": (lambda d: d["setup_commands"].append("export HUGGING_FACE_HUB_TOKEN=abc123"), "HUGGING_FACE_HUB_TOKEN is set to a literal value"),
    "password-in-url": (lambda d: d["setup_commands"].append("export MLFLOW_TRACKING_URI=https://bob:hunter2@mlflow.example.com"), "a password in a URL"),
    "generic-secret": (lambda d: d["setup_commands"].append("export DB_SECRET=s3cr3t"), "DB_SECRET is set to a literal value"),
    "relative-storage": (lambda d: d["metadata"]["raysl"].__setitem__("storage", "shared/raysl"), "not an absolute path"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNSAFE))
def test_the_doctor_flags_unsafe_cluster_files(tmp_path: Path, capsys, case: str) -> None:
    change, says = UNSAFE[case]
    path = _cluster(tmp_path, case, change)
    with pytest.raises(SystemExit) as info:
        main(["doctor", str(path)])
    assert info.value.code == 1
    out = capsys.readouterr().out.strip().splitlines()
    problems = [line for line in out if not line.startswith(("warning:", "unhealthy:"))]
    assert len(problems) == 1 and says in problems[0] and f"{case}.yaml" in problems[0], out
    assert out[-1] == "unhealthy: 1 problem(s)"


def test_the_doctor_leaves_references_and_the_shipped_files_alone(tmp_path: Path, capsys):
    path = _cluster(
        tmp_path,
        "references",
        lambda d: d["setup_commands"].extend(
            ["export WANDB_API_KEY=$WANDB_API_KEY", "wandb login $WANDB_KEY", "echo ::1"]
        ),
    )
    for cluster in [path, *sorted((REPO / "clusters").glob("*.yaml"))]:
        main(["doctor", str(cluster)])  # no SystemExit: healthy
        assert "healthy:" in capsys.readouterr().out, cluster


# ---- item 7: size limits ------------------------------------------------------------------------
def test_many_problems_are_cut_to_twenty_lines(tmp_path: Path, monkeypatch, capsys) -> None:
    keys = "".join(f"    k{i}: {i}\n" for i in range(20_000))
    path = write(tmp_path / "many.yaml", f"name: m\nconfig:\n  optim:\n{keys}")
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(["config", str(path)])
    assert info.value.code == 2 and time.monotonic() - started < 60
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "error: 20,000 problems" and len(lines) == 22, lines[:3]
    assert lines[1].startswith(f"{path}:4: optim.k0: unknown key")
    assert lines[-1] == "… and 19,980 more problems"


def test_a_ten_megabyte_run_file_is_refused_by_its_size(refused, tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"name: h\nconfig:\n" + b"  # padding\n" * 900_000)
    started = time.monotonic()
    refused("train", path, says=("huge.yaml", "10.8 MB", "1.0 MB allowed"))
    assert time.monotonic() - started < 10


# ---- item 8: resume corner cases ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "corrupt study state (not JSON"),
        ("", "corrupt study state"),
        ("[1, 2, 3]", "it holds a list, not an object"),
        ('{"optuna_study": 7}', "optuna_study must be a non-empty string"),
        ('{"optuna_study": "s-1", "parent_run_id": ["x"]}', "parent_run_id a string"),
    ],
    ids=["corrupt", "empty", "list", "number", "run-id-list"],
)
def test_a_broken_study_json_on_resume_is_one_line(
    refused, tmp_path: Path, content: str, says: str
) -> None:
    out = tmp_path / "work" / "runs" / "s"
    out.mkdir(parents=True)
    (out / "study.json").write_text(content)
    line = refused("tune", _study(tmp_path), "--resume", says=(says, "without --resume"))
    assert "runs/s/study.json" in line


def test_a_checkpoint_holding_an_empty_dict_is_one_line(refused, tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "run" / "checkpoints" / "epoch_0001"
    checkpoint.mkdir(parents=True)
    torch.save({}, checkpoint / "state.pt")
    (checkpoint / "meta.json").write_text(json.dumps({"epoch": 1}))
    refused("export", checkpoint, tmp_path / "enc", says=("state.pt", "missing config, model"))
    run = write(tmp_path / "run.yaml", {"name": "run", "config": _with()["config"]})
    refused(
        "train", run, "--out", tmp_path / "run", "--resume",
        says=("none of the 1 checkpoint(s) can be read", "missing"),
    )  # fmt: skip
