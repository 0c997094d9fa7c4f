"""Where a command writes, checked before anything starts; and a full disk while it runs.

`check_output_dir` refuses an output directory that cannot be created or written (a file in
its place or above it, no write permission, a read-only filesystem), `check_storage` a
`--storage` whose scheme no filesystem reads, `check_no_earlier_study` a new study over an
earlier one's Tune state, each with one line naming the flag and the fix,
before Ray, MLflow or any file is started or written (the CLI exits 2). Nothing is created to
find out: the nearest existing directory is asked (`os.access`), so a refused command changes
nothing on disk.

`disk_full` recognises a write that failed for lack of space while a run was going (ENOSPC,
EDQUOT, EROFS, or PyTorch's "file write failed", which hides the errno), so the CLI can say so
in one line (exit 1) instead of a traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from raysl.errors import ConfigError, Problem, cut

# pyarrow.fs.FileSystem.from_uri's schemes (what Ray Tune and Ray Train write to)
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock")
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def check_output_dir(path: str | Path, key: str) -> None:
    """Refuse `path` as a directory this command creates or writes into, when it cannot be.

    Raises:
        ConfigError: `path` (or a directory above it) is a file, or the nearest existing
            directory is not writable by this user.
    """
    path = Path(path).expanduser()
    shown = cut(str(path), 200)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            Problem(f"{shown} is a file, not a directory; choose another {key}", key=key)
        )
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
    if not existing.is_dir():
        raise ConfigError(
            Problem(
                f"{cut(str(existing), 200)} is a file, so {shown} cannot be created below it; "
                f"move the file or choose another {key}",
                key=key,
            )
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (to create {shown})"
        raise ConfigError(
            Problem(
                f"{cut(str(existing), 200)} is not writable by this user{where}: permission "
                f"denied or a read-only filesystem; choose another {key} or fix its permissions",
                key=key,
            )
        )


def check_storage(storage: str, key: str = "--storage") -> None:
    """Refuse a storage location no filesystem can write: an unknown URI scheme, or a local
    directory that cannot be written (`check_output_dir`)."""
    if "://" not in storage:
        check_output_dir(storage, key)
        return
    scheme, _, rest = storage.partition("://")
    if scheme.lower() not in STORAGE_SCHEMES:
        raise ConfigError(
            Problem(
                f"unknown scheme {cut(scheme, 40)}:// in {cut(storage, 120)}; give a path or a "
                f"URI of {', '.join(s + '://' for s in STORAGE_SCHEMES[:3])} (pyarrow's "
                "filesystems: also hdfs, abfs)",
                key=key,
            )
        )
    if scheme.lower() == "file":
        check_output_dir("/" + rest.lstrip("/"), key)


def experiment_name(out: Path) -> str:
    """The Tune experiment of the study in `out` (`raysl.launch.ray_tune`): `out`'s name, as
    `raysl train` names its run in the storage. Two studies of one search space with
    different `--out`s on one storage do not share Tune's state; the same `--out` again is a
    `--resume`."""
    return Path(out).resolve().name


def check_no_earlier_study(storage: str, name: str, out: Path) -> None:
    """Refuse a new study whose Tune experiment (`<storage>/<name>`) or finalists
    (`<storage>/<name>-finalists`) already hold Tune's state: an earlier study of that
    `--out` name, which the new one would mix with (its finalists would be restored, not
    run). Local storage only; a URI's filesystem is not opened before Ray starts."""
    if "://" in storage and not storage.lower().startswith("file://"):
        return
    root = Path("/" + storage.partition("://")[2].lstrip("/") if "://" in storage else storage)
    for experiment in (root / name, root / f"{name}-finalists"):
        if next(experiment.glob("experiment_state-*.json"), None) is not None:
            raise ConfigError(
                Problem(
                    f"{cut(str(experiment), 200)} holds Tune's state of an earlier study; "
                    f"continue that one with --resume --out {cut(str(out), 120)}, delete "
                    "the directory, or choose another --out",
                    key="--out",
                )
            )


def disk_full(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is a write that found no space (or a
    read-only filesystem)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
            return True
        if isinstance(error, RuntimeError) and "file write failed" in str(error):
            return True  # torch.save's PytorchStreamWriter: the errno is not kept
        error = error.__cause__ or error.__context__
    return False


def disk_full_line(error: BaseException, config_file: Path, out: Path) -> str:
    """One line for a write of `raysl train`'s run in `out` that found no space (or a
    read-only disk): the newest complete checkpoint and the command that continues."""
    from raysl.checkpoint import latest_checkpoint

    for _ in range(10):  # torch.save's RuntimeError hides the OSError in its context
        if isinstance(error, OSError) or not (error.__cause__ or error.__context__):
            break
        error = error.__cause__ or error.__context__
    why = getattr(error, "strerror", None) or "no space left on device"
    newest = latest_checkpoint(out / "checkpoints")
    kept = (
        f"the newest complete checkpoint is {newest.name} (nothing half-written is left)"
        if newest
        else "no checkpoint was complete"
    )
    return (
        f"cannot write the run in {out} ({why.lower()}); {kept}; free space, then continue "
        f"with: raysl train {config_file} --out {out} --resume"
    )
