"""`raysl ui`: the MLflow UI on the study store, as a child `mlflow server` process."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

from raysl.errors import ConfigError, Problem

_START_TIMEOUT = 180.0  # seconds; mlflow imports slowly on a busy machine


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--tracking-uri",
    metavar="URI",
    help="MLflow store [default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; 0.0.0.0 makes the UI reachable from other machines.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="Port to listen on.",
)
def ui(tracking_uri: str | None, host: str, port: int) -> None:
    """Start the MLflow UI on the store that studies log to, and wait; Ctrl-C stops it.

    Each search space is an experiment, each study a parent run and each trial a nested
    child run. For each study's experiment it prints a link to its trials table (searched
    params, the metric, status, stopped-at epoch): select trials and press Compare to see
    their params and curves side by side.
    With an MLflow server as --tracking-uri, open the server's own address instead.
    """
    from raysl.tracking.store import ARTIFACTS_DIR, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        click.echo(f"{uri} is an MLflow server, which serves the UI itself: open {uri}")
        return
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(
            Problem(
                f"no MLflow store at {db}; run a study in this directory first, or pass "
                "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store to show",
                key="--tracking-uri",
            )
        )
    _check_port(host, port)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    if db is not None:
        command += ["--artifacts-destination", str(db.parent / ARTIFACTS_DIR)]
    log = Path(tempfile.gettempdir()) / f"raysl-mlflow-ui-{port}.log"
    with open(log, "w", encoding="utf-8") as output:
        # Its own session: Ctrl-C reaches only raysl, which stops the whole server group.
        server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No GenAI job runner (eight extra processes that a study browser does not use).
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ},
        )
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _interrupt) for sig in stop_signals}
    stopped_by_user = False
    try:
        _wait_until_up(server, f"http://{_url_host(_probe_host(host))}:{port}", log)
        base = f"http://{_url_host(_shown_host(host))}:{port}"
        click.echo(f"MLflow UI: {base}   (Ctrl-C stops it)")
        for name, link in _study_links(uri, base):
            click.echo(f"  {name}: {link}")
        click.echo(f"store: {uri}; server log: {log}")
        if _probe_host(host) not in ("127.0.0.1", "::1", "localhost"):
            click.echo(
                f"note: bound to {host}, so other machines can reach this UI (it has no login); "
                "MLflow answers requests addressed to localhost and private IPs only"
            )
        code = server.wait()
        raise click.ClickException(f"the MLflow UI stopped (exit {code}):\n{_tail(log)}")
    except KeyboardInterrupt:
        click.echo("stopping the MLflow UI")
        stopped_by_user = True
    finally:
        _stop(server)
        if stopped_by_user:
            log.unlink(missing_ok=True)  # kept only when something went wrong
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _study_links(uri: str, base: str, limit: int = 8) -> list[tuple[str, str]]:
    """(experiment, link to its trials table) for the experiments studies made, newest first."""
    from raysl.tracking.store import open_client
    from raysl.tracking.view import VIEW_TAG, runs_table_url

    try:
        client = open_client(uri, must_exist=True)
        found = client.search_experiments(order_by=["last_update_time DESC"])
    except Exception:  # the links are a convenience; the UI itself is up
        return []
    studies = [e for e in found if VIEW_TAG in e.tags]
    return [(e.name, runs_table_url(base, e.experiment_id)) for e in studies[:limit]]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_port(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError(Problem(f"unknown host {host!r} ({error})", key="--host")) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                message = (
                    f"port {port} on {host} is in use (another MLflow UI?); pick one with --port"
                )
                raise ConfigError(Problem(message, key="--port")) from None
            message = f"cannot listen on {host}:{port} ({error.strerror})"
            raise ConfigError(Problem(message, key="--host")) from None


def _wait_until_up(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        code = server.poll()
        if code is not None:
            raise click.ClickException(f"the MLflow UI did not start (exit {code}):\n{_tail(log)}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise click.ClickException(
        f"the MLflow UI did not answer at {url} within {_START_TIMEOUT:.0f} s; see {log}"
    )


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow and its uvicorn child), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(server.pid, 0)  # any member of the group left?
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _probe_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _shown_host(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log})"
