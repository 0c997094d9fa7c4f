"""A killed driver's state names a checkpoint Tune had deleted: put back before the restore.

The rule on hand-made files (the names sit in a pickled checkpoint manager, as in Tune's
state), then real Tune: a study's state files copied while its trials ran (what a driver
killed then leaves), the study run to its end (`num_to_keep=1` deletes every older
checkpoint), and the copied state put back. Tune alone fails those trials ("does not exist
on storage anymore"); after `repair_checkpoints` every trial finishes, without an error, from
the checkpoint that replaced the named one, and no step runs twice.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from raysl.launch.tune_checkpoints import named_checkpoints, repair_checkpoints


def _state(named: dict[str, int]) -> bytes:
    """An experiment state whose trials' checkpoint managers name checkpoints up to `named`."""
    trials = []
    for trial, newest in named.items():
        manager = {"results": [f"/x/{trial}/checkpoint_{i:06d}" for i in range(newest + 1)]}
        runtime = {"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK",
                                          "value": pickle.dumps(manager).hex()}}  # fmt: skip
        trials.append([json.dumps({"relative_logdir": trial}), json.dumps(runtime)])
    return json.dumps({"trial_data": trials, "runner_data": {}}).encode()


def _checkpoint(path: Path, step: int) -> None:
    path.mkdir(parents=True)
    (path / "step.json").write_text(json.dumps({"step": step}))


def test_a_deleted_named_checkpoint_comes_back_as_the_one_that_replaced_it(tmp_path: Path):
    a, b, c = "_fit_a1b2c3d4_1_x=1", "_fit_b1b2c3d4_2_x=2", "_fit_c1b2c3d4_3_x=3"
    for i in (1, 2):  # a: 0 deleted at 1's registration; 2 written, not yet registered
        _checkpoint(tmp_path / a / f"checkpoint_{i:06d}", i + 1)
    _checkpoint(tmp_path / b / "checkpoint_000003", 4)
    state = tmp_path / "experiment_state-2026-12-06_01-00-00.json"
    state.write_bytes(_state({a: 0, b: 3, c: 1}))  # c: named, gone, nothing newer
    assert named_checkpoints(state.read_bytes()) == {a: 0, b: 3, c: 1}
    [line] = repair_checkpoints(str(tmp_path))
    assert "trial a1b2c3d4" in line and "goes on from checkpoint_000001" in line
    restored = tmp_path / a / "checkpoint_000000"
    assert json.loads((restored / "step.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in (tmp_path / a).iterdir()) == [
        "checkpoint_000000", "checkpoint_000001", "checkpoint_000002",
    ]  # fmt: skip
    assert repair_checkpoints(str(tmp_path)) == []  # nothing left to do
    state.write_bytes(state.read_bytes()[:50])  # cut short: repair_state's business first
    assert repair_checkpoints(str(tmp_path)) == []


def _fit(config: dict) -> None:
    import ray.tune

    start = 0
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "step.json").read_text())["step"]
    with open(config["log"], "a") as log:
        log.write(f"{config['x']} from {start}\n")
    for step in range(start, 4):
        time.sleep(0.5)  # steps long enough for the state to be copied mid-trial
        with tempfile.TemporaryDirectory() as d:
            Path(d, "step.json").write_text(json.dumps({"step": step + 1}))
            ray.tune.report(
                {"score": config["x"] * (step + 1)},
                checkpoint=ray.tune.Checkpoint.from_directory(d),
            )


STATE = ("experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json",
         "searcher-state-*.pkl", "tuner.pkl")  # fmt: skip


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_killed_after_a_deletion_resumes_every_trial(tmp_path: Path, local_ray: None):
    import ray.tune

    experiment, kept, log = tmp_path / "study", tmp_path / "kept", tmp_path / "log.txt"

    class CopyMidRun(ray.tune.Callback):
        """Copies the state files once they name an early checkpoint of a running trial."""

        def on_step_end(self, iteration: int, trials: list, **info) -> None:
            states = sorted(experiment.glob(STATE[0]))
            if kept.exists() or not states:
                return
            data = states[-1].read_bytes()
            try:
                named = named_checkpoints(data)
            except ValueError:  # being written
                return
            running = {t.path.split("/")[-1] for t in trials if t.status == "RUNNING"}
            if any(i <= 1 and t in running for t, i in named.items()):
                kept.mkdir()
                for pattern in STATE:
                    for path in experiment.glob(pattern):
                        shutil.copy2(path, kept / path.name)

    ray.tune.Tuner(
        _fit,
        param_space={"x": ray.tune.grid_search([1, 2]), "log": str(log)},
        run_config=ray.tune.RunConfig(
            name="study",
            storage_path=str(tmp_path),
            callbacks=[CopyMidRun()],
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    ).fit()
    assert kept.is_dir(), "the state was never copied mid-run"
    for path in experiment.glob("experiment_state-*.json"):
        path.unlink()
    shutil.copytree(kept, experiment, dirs_exist_ok=True)  # what the killed driver left
    named = named_checkpoints(sorted(experiment.glob(STATE[0]))[-1].read_bytes())
    gone = [t for t, i in named.items() if not (experiment / t / f"checkpoint_{i:06d}").exists()]
    assert gone, named  # num_to_keep=1 deleted what the copied state names

    control = tmp_path / "control"  # Tune alone
    shutil.copytree(experiment, control)
    results = ray.tune.Tuner.restore(str(control), _fit, resume_errored=True).fit()
    assert any(r.error is not None and "does not exist" in str(r.error) for r in results)

    lines = repair_checkpoints(str(experiment))
    assert len(lines) == len(gone)
    starts = len(log.read_text().splitlines())
    results = ray.tune.Tuner.restore(str(experiment), _fit, resume_errored=True).fit()
    assert all(r.error is None for r in results), [str(r.error) for r in results]
    resumed = log.read_text().splitlines()[starts:]
    # each repaired trial went on from the newest checkpoint on disk (num_to_keep=1 left step
    # 4): none of its steps ran again (a trial the copied state named no checkpoint of
    # starts over, as Tune does)
    for trial in gone:
        x = trial.split("_x=")[1].split("_")[0]
        assert f"{x} from 4" in resumed and f"{x} from 0" not in resumed, resumed
