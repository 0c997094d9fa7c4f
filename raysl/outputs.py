"""Where a command writes, checked before anything starts; and a full disk while it runs.

`check_output_dir` refuses an output directory that cannot be created or written (a file in
its place or above it, no write permission, a read-only filesystem), `check_storage` a
`--storage` whose scheme no filesystem reads, each with one line naming the flag and the fix,
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
