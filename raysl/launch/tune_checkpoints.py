"""A resumed study whose state names a checkpoint Tune had already deleted.

With `CheckpointConfig(num_to_keep=1)`, Tune (2.60) deletes a trial's previous checkpoint the
moment it registers the next one (`_CheckpointManager.register_checkpoint`), but writes the
experiment state, which names each trial's latest checkpoint, only at a later controller step
(the forced snapshot after every `num_to_keep` checkpoints). A driver killed in between leaves
a state that names a deleted checkpoint, and `Tuner.restore` then fails that trial: "Could not
recover from checkpoint as it does not exist on storage anymore" (seen in
`tests/launch/test_ray_tune.py::test_killed_driver_resumes_without_duplicates`, about one run
in three here, and on CI).

`repair_checkpoints` runs before the restore: for each trial whose named checkpoint is gone,
it puts back, under that name, a copy of the trial's oldest checkpoint newer than it, the one
whose registration deleted it. Its epoch had been registered, so its metrics are already in
MLflow (`raysl.launch.epoch_log`), and the trial goes on from it without running any epoch
twice and without skipping one. What is not the same as an uninterrupted study: Tune's own
iteration count for that trial stays at the snapshot's (one or more epochs behind raysl's
`epoch`), which only moves where ASHA's rungs fall for that one trial.

The names come from the state's pickled checkpoint manager (`checkpoint_<6 digits>` in its
bytes, read as bytes and never unpickled).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from raysl.launch.tune_state import PATTERNS, reads_whole

_NAME = re.compile(rb"checkpoint_(\d{6})")


def named_checkpoints(state: bytes) -> dict[str, int]:
    """{trial directory (relative): index of the newest checkpoint the state names} for the
    trials of an experiment state (JSON) that name one."""
    named: dict[str, int] = {}
    for trial_part, runtime_part in json.loads(state).get("trial_data", []):
        trial, runtime = json.loads(trial_part), json.loads(runtime_part)
        manager = runtime.get("checkpoint_manager") or {}
        value = manager.get("value") if isinstance(manager, dict) else None
        if not isinstance(value, str) or not trial.get("relative_logdir"):
            continue
        indices = [int(i) for i in _NAME.findall(bytes.fromhex(value))]
        if indices:
            named[str(trial["relative_logdir"])] = max(indices)
    return named


def repair_checkpoints(experiment: str) -> list[str]:
    """Put back each checkpoint the newest experiment state names but Tune deleted (see the
    module docstring); one line per trial repaired, for the user. A local directory only."""
    directory = Path(experiment)
    states = sorted(directory.glob(PATTERNS[0])) if directory.is_dir() else []
    if not states or not reads_whole(states[-1]):  # Tune restores the newest by name
        return []
    lines = []
    for trial, index in named_checkpoints(states[-1].read_bytes()).items():
        named = directory / trial / f"checkpoint_{index:06d}"
        if named.exists():
            continue
        newer = sorted(
            p
            for p in (directory / trial).glob("checkpoint_*")
            if p.name[11:].isdigit() and int(p.name[11:]) > index and p.is_dir()
        )
        if not newer:
            continue
        tmp = named.with_name(named.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(newer[0], tmp)
        tmp.rename(named)
        found = re.search(r"_([0-9a-f]{8})_", trial)  # Tune's directory: _<fn>_<trial id>_<n>_...
        lines.append(
            f"trial {found.group(1) if found else trial}: Tune had deleted "
            f"{named.name} before its state named {newer[0].name} (the driver was killed in "
            f"between); it goes on from {newer[0].name}"
        )
    return lines
