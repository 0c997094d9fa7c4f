"""Where MLflow data lives: the tracking URI, opening a client, artifact roots, code version.

Default store: `sqlite:///<cwd>/mlflow.db` with artifacts in `<cwd>/mlartifacts/<experiment>/`
(the directory `mlflow server` also uses). `--tracking-uri` or `MLFLOW_TRACKING_URI` selects
a server (`http://host:5000`) or another store. Every MLflow call goes through an explicit
`MlflowClient`, never through mlflow's process-global tracking URI or active-run stack.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysl.errors import ConfigError, Problem

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# Read by mlflow at call time: no "View run at ..." line per finished run on stdout and no
# progress bars for artifact transfers; a study with 200 trials would otherwise flood the terminal.
_QUIET_ENV = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# The loggers mlflow gives their own stderr handler on import.
_MLFLOW_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "huey")


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """The tracking URI: `cli_value`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`.

    SQLite URIs (and bare `*.db` paths) are made absolute, so every process and thread
    that is handed the URI opens the same file whatever its working directory.

    Raises:
        ConfigError: the value is neither a URI nor a `.db` path, or names an in-memory database.
    """
    where = "--tracking-uri" if cli_value else "MLFLOW_TRACKING_URI"
    value = (cli_value or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not value:
        check_sqlite_file(Path.cwd() / DEFAULT_DB, f"{DEFAULT_DB} (the default store)")
        return sqlite_uri(Path.cwd() / DEFAULT_DB)
    if "://" not in value:
        if value.endswith(".db"):
            check_sqlite_file(Path(value), where)
            return sqlite_uri(Path(value))
        if value.startswith("databricks"):
            return value
        raise ConfigError(
            Problem(
                f"{value!r} is not a tracking URI; give http://HOST:PORT for an MLflow server "
                "or sqlite:///PATH/mlflow.db (or a path ending in .db) for a local store",
                key=where,
            )
        )
    scheme = value.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = value[len("sqlite:///") :] if value.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(
                Problem(
                    f"{value!r} is an in-memory database that no other process can see; "
                    "give sqlite:///PATH/mlflow.db",
                    key=where,
                )
            )
        check_sqlite_file(Path(path), where)
        return sqlite_uri(Path(path))
    if scheme in ("http", "https"):
        return value.rstrip("/")
    if scheme.split("+", 1)[0] not in TRACKING_SCHEMES:
        raise ConfigError(
            Problem(
                f"MLflow cannot store runs at {value[:120]!r} (scheme {scheme[:40]}://); give "
                "http://HOST:PORT for an MLflow server or sqlite:///PATH/mlflow.db (also: "
                f"{', '.join(s + '://' for s in TRACKING_SCHEMES if s not in ('http', 'https', 'sqlite'))})",
                key=where,
            )
        )
    return value


# The schemes of MLflow's tracking-store registry (`mlflow.tracking._tracking_service.utils`:
# file, databricks, http(s), and the SQLAlchemy databases, with an optional `+driver`).
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "databricks", "postgresql", "mysql", "mssql")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(path: Path, where: str) -> None:
    """Refuse a store path that holds something other than an SQLite database (an empty file
    is one MLflow fills)."""
    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(
            Problem(
                f"{path} is a directory, not an SQLite file; give sqlite:///PATH/mlflow.db",
                key=where,
            )
        )
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except (FileNotFoundError, NotADirectoryError):  # a new store (its directory: checked by tune)
        return
    except OSError as error:
        raise ConfigError(
            Problem(f"cannot read {path} ({error.strerror}); fix its permissions", key=where)
        ) from None
    if head and head != _SQLITE_MAGIC:
        raise ConfigError(
            Problem(
                f"{path} is not an SQLite database (it starts with {head[:8]!r}); move it away "
                "or give another sqlite:///PATH/mlflow.db",
                key=where,
            )
        )


def sqlite_uri(path: Path) -> str:
    """`sqlite:////abs/path/mlflow.db` (three slashes, then the absolute path)."""
    return "sqlite:///" + Path(path).expanduser().resolve().as_posix()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, or None for other stores."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: next to a SQLite file, else the server's choice."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIR / slug(experiment)).as_uri()


def slug(name: str) -> str:
    """`name` as one safe path component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def search_all(
    client: MlflowClient, experiment_id: str, query: str, newest_first: bool = False
) -> list[Any]:
    """Every run of an experiment that matches `query` (all result pages), by start time."""
    order = ["attributes.start_time DESC" if newest_first else "attributes.start_time ASC"]
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], query, order_by=order, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def open_client(uri: str, must_exist: bool = False) -> MlflowClient:
    """An `MlflowClient` for `uri`, with mlflow's terminal output routed to logging.

    Args:
        must_exist: refuse a SQLite file that does not exist yet (readers such as
            `raysl report` must not create an empty store).

    Raises:
        ConfigError: a missing store (`must_exist`), or a server that does not answer.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    db = sqlite_path(uri)
    if db is not None:
        if must_exist and not db.is_file():
            raise ConfigError(
                Problem(
                    f"no MLflow store at {db}; run a study in this directory first, or pass "
                    "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store or server to use",
                    key="--tracking-uri",
                )
            )
        db.parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    return MlflowClient(tracking_uri=uri)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a server that does not answer (mlflow itself retries for minutes)."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise ConfigError(
        Problem(
            f"cannot reach the MLflow server at {uri} ({reason}); start it, or fix "
            "--tracking-uri / MLFLOW_TRACKING_URI",
            key="--tracking-uri",
        )
    )


def quiet_mlflow() -> None:
    """Send mlflow's, alembic's and SQLAlchemy's records to the root logger, not stderr.

    mlflow gives these loggers their own stderr handler on import (database migrations log
    "Creating initial MLflow database tables..."); the CLI routes the root logger to a file.
    """
    for name in _MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                logger.removeHandler(handler)
        logger.propagate = True


@functools.lru_cache(maxsize=1)
def code_version() -> tuple[str, str | None]:
    """`("0.1.0+gab92e96c1f2e.dirty", full_commit)`; the commit is None outside a git checkout."""
    try:
        version = importlib.metadata.version("raysl")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        # Only raysl's own checkout counts, not a repository that happens to contain a venv.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.parent:
            return version, None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return version, None
    return f"{version}+g{commit[:12]}{'.dirty' if dirty else ''}", commit
