"""Tune's state files, cut short as a driver killed mid-write leaves them, and their repair.

The unit tests cut real files at every length; the real-Ray test runs a Tuner with
`KeepState`, truncates its experiment state to 0 bytes (what the killed driver of
tests/launch/test_finalists.py left), shows that Tune then restarts the study from nothing,
and that after `repair_state` it restores the trials it had, none run again.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

from raysl.launch.tune_state import (
    GOOD,
    keep_good_copies,
    reads_whole,
    repair_state,
    restorable,
)


def _files(directory: Path) -> dict[str, bytes]:
    state = {"trial_data": [["{}", "{}"]], "runner_data": {"x": list(range(50))}}
    searcher = {"points": [{"lr": 0.1 * i} for i in range(20)], "name": "tpe"}
    files = {
        "experiment_state-2026-12-05_01-00-00.json": json.dumps(state).encode(),
        "searcher-state-2026-12-05_01-00-00.pkl": pickle.dumps(searcher, protocol=5),
        "tuner.pkl": pickle.dumps({"param_space": {"finalist": [0, 1, 2]}}),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def test_a_file_cut_at_any_length_does_not_read_whole(tmp_path: Path) -> None:
    for name, data in _files(tmp_path).items():
        path = tmp_path / name
        assert reads_whole(path), name
        for length in range(len(data)):  # every truncation, 0 bytes included
            path.write_bytes(data[:length])
            assert not reads_whole(path), (name, length)


def test_repair_puts_back_the_last_good_copies_and_moves_aside_the_rest(tmp_path: Path) -> None:
    files = _files(tmp_path)
    seen: dict[str, tuple[int, int]] = {}
    keep_good_copies(tmp_path, seen)
    for name, data in files.items():
        assert (tmp_path / (name + GOOD)).read_bytes() == data
    state, searcher, tuner = (tmp_path / name for name in files)
    state.write_bytes(b"")  # the driver killed mid-copy
    searcher.write_bytes(files[searcher.name][:100])
    keep_good_copies(tmp_path, seen)  # a cut file is never taken for a good copy
    assert (tmp_path / (state.name + GOOD)).read_bytes() == files[state.name]
    lines = repair_state(str(tmp_path))
    assert len(lines) == 2 and all("last good copy is back" in line for line in lines)
    assert {p.name: p.read_bytes() for p in (state, searcher, tuner)} == files
    assert repair_state(str(tmp_path)) == []  # nothing left to repair
    # a cut file with no good copy is moved aside, and the state is then not restorable
    (tmp_path / (state.name + GOOD)).unlink()
    state.write_bytes(b'{"trial_data": [')
    [line] = repair_state(str(tmp_path))
    assert "no good copy" in line and not state.exists()
    assert (tmp_path / (state.name + ".corrupt")).read_bytes() == b'{"trial_data": ['
    assert not restorable(str(tmp_path))


def _fit(config: dict) -> None:
    import ray.tune

    with open(config["attempts"], "a") as log:  # one line per start of a trial
        log.write(f"{config['x']}\n")
    start = 0
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "step.json").read_text())["step"]
    for step in range(start, 2):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "step.json").write_text(json.dumps({"step": step + 1}))
            ray.tune.report(
                {"score": config["x"] * (step + 1)},
                checkpoint=ray.tune.Checkpoint.from_directory(d),
            )


def test_a_cut_experiment_state_is_repaired_and_restores_the_study(
    tmp_path: Path, local_ray: None
) -> None:
    import ray.tune

    from raysl.launch.tune_state import KeepState

    attempts = tmp_path / "attempts.txt"
    tuner = ray.tune.Tuner(
        _fit,
        param_space={"x": ray.tune.grid_search([1, 2]), "attempts": str(attempts)},
        run_config=ray.tune.RunConfig(
            name="study", storage_path=str(tmp_path), callbacks=[KeepState()], verbose=0
        ),
    )
    first = tuner.fit()
    ids = sorted(r.metrics["trial_id"] for r in first)
    assert sorted(attempts.read_text().split()) == ["1", "2"]  # each trial started once
    experiment = tmp_path / "study"
    [state] = experiment.glob("experiment_state-*.json")
    assert (experiment / (state.name + GOOD)).read_bytes() == state.read_bytes()
    state.write_bytes(b"")  # what a driver killed while Tune copied it leaves
    control = tmp_path / "control"
    shutil.copytree(experiment, control)
    for good in control.glob("*" + GOOD):
        good.unlink()

    # Tune alone, on the cut state: "Failed to restore the run state", the study restarts
    before = len(attempts.read_text().split())
    assert not restorable(str(control))
    restarted = ray.tune.Tuner.restore(str(control), _fit).fit()
    assert (
        len(attempts.read_text().split()) > before
        or sorted(r.metrics.get("trial_id") for r in restarted) != ids
    )

    # repaired: the same trials, finished, none started again
    [line] = repair_state(str(experiment))
    assert state.name in line and "last good copy is back" in line
    assert restorable(str(experiment))
    before = len(attempts.read_text().split())
    restored = ray.tune.Tuner.restore(str(experiment), _fit, resume_errored=True).fit()
    assert sorted(r.metrics["trial_id"] for r in restored) == ids
    assert sorted(r.metrics["score"] for r in restored) == [2, 4]
    assert len(attempts.read_text().split()) == before  # nothing ran again
