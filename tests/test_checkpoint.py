"""Checkpoints are atomic directories; only complete ones are ever listed or loaded; a crafted
or broken file is refused in one line (and a broken newest one falls back to the one before)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raysl.checkpoint import (
    CheckpointError,
    check_resumable,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_intact,
    save_checkpoint,
)
from raysl.errors import ConfigError


def test_save_load_keep(tmp_path: Path) -> None:
    for epoch in range(1, 5):
        save_checkpoint(
            tmp_path, epoch, {"epoch": epoch, "w": torch.full((3,), float(epoch))}, keep=2
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_0003", "epoch_0004"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["epoch"] == 4 and state["w"].tolist() == [4.0, 4.0, 4.0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resaving_an_epoch_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"v": 1})
    save_checkpoint(tmp_path, 1, {"v": 2})
    assert load_checkpoint(tmp_path / "epoch_0001")["v"] == 2
    assert len(list(tmp_path.iterdir())) == 1


def test_half_written_checkpoints_are_invisible(tmp_path: Path) -> None:
    """Kill a writer in the middle of a large save: nothing incomplete is ever listed."""
    save_checkpoint(tmp_path, 1, {"v": 1})
    script = (
        "import sys, torch; from raysl.checkpoint import save_checkpoint\n"
        "for e in range(2, 100): save_checkpoint(sys.argv[1], e, {'x': torch.randn(4_000_000)}, keep=100)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.name.startswith(".tmp-") for p in tmp_path.iterdir()
    ):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    for checkpoint in list_checkpoints(tmp_path):  # every listed checkpoint loads completely
        state = load_checkpoint(checkpoint)
        assert "v" in state or state["x"].numel() == 4_000_000
    assert latest_checkpoint(tmp_path) is not None
    assert os.path.exists(tmp_path / "epoch_0001" / "state.pt")


# ---- hostile and broken files (issue 15) ----------------------------------------------------
class _Payload:
    """A pickle that runs a shell command when unpickled (what a crafted state.pt does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL, "torch"])
def test_a_pickle_payload_is_refused_without_running(tmp_path: Path, protocol) -> None:
    marker = tmp_path / "ran"
    target = tmp_path / "run" / "epoch_0001"
    target.mkdir(parents=True)
    state = {"epoch": 1, "model": _Payload(marker)}
    if protocol == "torch":
        torch.save(state, target / "state.pt")
        torch.load(target / "state.pt", weights_only=False)  # unpickled for real, it runs
    else:
        (target / "state.pt").write_bytes(pickle.dumps(state, protocol=protocol))
        pickle.loads((target / "state.pt").read_bytes())  # unpickled for real, it runs
    assert marker.exists()  # the payload works
    marker.unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target)
    text = str(info.value)
    assert "\n" not in text and "epoch_0001/state.pt" in text
    if protocol == pickle.HIGHEST_PROTOCOL:  # torch's reader stops at protocol 5's framing
        assert "corrupt" in text
    else:
        assert info.value.unsafe and "refused" in text and "posix.system" in text
        assert "nothing in it was run" in text
        with pytest.raises(CheckpointError):  # and newest_intact does not fall back past it
            newest_intact(tmp_path / "run")
    assert not marker.exists()


def _good(directory: Path, epoch: int) -> Path:
    return save_checkpoint(directory, epoch, {"epoch": epoch, "w": torch.ones(3)}, keep=10)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated or damaged"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "corrupt"),
        (lambda p: torch.save({}, p), "missing epoch"),
        (lambda p: torch.save([1, 2], p), "it holds a list"),
    ],
    ids=["empty", "truncated", "random", "empty-dict", "list"],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, damage, says: str
) -> None:
    _good(tmp_path, 1)
    newest = _good(tmp_path, 2)
    damage(newest / "state.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(newest, require=("epoch",))
    assert says in str(info.value) and "epoch_0002/state.pt" in str(info.value)
    assert not info.value.unsafe and "\n" not in str(info.value)
    path, state, notes = newest_intact(tmp_path, require=("epoch",))
    assert path == tmp_path / "epoch_0001" and state["epoch"] == 1
    assert len(notes) == 1 and "epoch_0002" in notes[0] and says in notes[0]


def test_no_intact_checkpoint_is_one_line_with_the_fix(tmp_path: Path) -> None:
    for epoch in (1, 2):
        (_good(tmp_path, epoch) / "state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        newest_intact(tmp_path)
    text = str(info.value)
    assert "none of the 2 checkpoint(s)" in text and "another --out" in text and "\n" not in text
    assert newest_intact(tmp_path / "nothing") == (None, None, [])


def test_what_an_older_raysl_saved_still_loads(tmp_path: Path) -> None:
    """Before weights_only loading, numpy's RNG state was saved as numpy's own tuple."""
    target = tmp_path / "epoch_0001"
    target.mkdir()
    torch.save({"epoch": 1, "rng": {"numpy": np.random.get_state()}}, target / "state.pt")
    state = load_checkpoint(target)
    assert state["rng"]["numpy"][0] == "MT19937" and state["rng"]["numpy"][1].dtype == np.uint32


def test_resumable_compares_meta_json_lists_with_tuples() -> None:
    check_resumable({"a": [1, 2], "epochs": 3}, {"a": (1, 2), "epochs": 5})
    with pytest.raises(ConfigError) as info:
        check_resumable({"a": "x" * 10_000}, {"a": "y"})
    assert len(str(info.value)) < 400  # values are cut to a readable length


def test_a_key_added_since_the_checkpoint_resumes_at_its_default() -> None:
    """A checkpoint made before `loss.infonce.symmetric` existed lacks the key: resuming with
    its default (True) is the same run; a saved value that differs is still a changed config."""
    from raysl.config import Config

    current = Config().to_flat()
    assert current["loss.infonce.symmetric"] is True
    older = {k: v for k, v in current.items() if k != "loss.infonce.symmetric"}
    check_resumable(older, current)  # the key is new, its value the default: same run
    with pytest.raises(ConfigError) as info:  # the new key set away from its default
        check_resumable(older, {**current, "loss.infonce.symmetric": False})
    assert "loss.infonce.symmetric: None -> False" in str(info.value)
    with pytest.raises(ConfigError) as info:  # a saved value that differs
        check_resumable({**current, "loss.infonce.symmetric": False}, current)
    assert "loss.infonce.symmetric: False -> True" in str(info.value)
