"""The head node's MLflow server, started by the cluster file's `head_start_ray_commands`.

    MLFLOW_TRACKING_URI=$(python -m raysl.launch.head_services ~/ray_bootstrap_config.yaml)

reads `metadata.raysl.storage` from the cluster config (`ray up` copies it to the head as
`~/ray_bootstrap_config.yaml`), starts `mlflow server` in the background, bound to the head's
internal IP (reachable from every node, not from the internet), with a SQLite store on the
head and artifacts proxied to `<storage>/mlflow` (workers need HTTP access to the head, no
cloud credentials), waits until `/health` answers, and prints the tracking URI. It is a
no-op when a healthy server already answers there (`ray up` runs the command again).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from raysl.launch.cluster import MLFLOW_PORT


def start_mlflow(
    storage: str, host: str, port: int = MLFLOW_PORT, home: Path | None = None
) -> tuple[str, int | None]:
    """Start the server (unless one answers already); returns (URI, pid or None).

    `home` holds mlflow.db, mlflow.log, mlflow.pid and mlflow_uri (default ~/raysl).
    """
    home = home or Path.home() / "raysl"
    home.mkdir(parents=True, exist_ok=True)
    uri = f"http://{host}:{port}"
    if healthy(uri):
        return uri, None
    destination = storage.rstrip("/") + "/mlflow"
    if "://" not in destination:
        Path(destination).mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
        "--workers", "2", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", destination,
    ]  # fmt: skip
    with open(home / "mlflow.log", "a") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command and `ray stop`
        )
    (home / "mlflow.pid").write_text(str(proc.pid))
    deadline = time.time() + 180
    while time.time() < deadline:
        if healthy(uri):
            (home / "mlflow_uri").write_text(uri)
            return uri, proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = (home / "mlflow.log").read_text()[-1500:]
    raise RuntimeError(f"the MLflow server did not start on {uri}; its log ends:\n{tail}")


def healthy(uri: str, timeout: float = 3.0) -> bool:
    """True when an MLflow server answers `uri`/health."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def internal_ip() -> str:
    """The address other nodes reach this one by (Ray's own choice of it)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def main(argv: list[str] | None = None) -> None:
    from raysl.errors import ConfigError
    from raysl.launch.cluster import load_cluster_file

    parser = argparse.ArgumentParser(prog="python -m raysl.launch.head_services")
    parser.add_argument("cluster_file", help="the cluster config (~/ray_bootstrap_config.yaml)")
    parser.add_argument("--host", help="bind address (default: this node's internal IP)")
    parser.add_argument("--port", type=int, default=MLFLOW_PORT)
    parser.add_argument("--home", type=Path, help="state directory (default ~/raysl)")
    args = parser.parse_args(argv)
    try:
        storage = load_cluster_file(args.cluster_file).storage
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        uri, _ = start_mlflow(storage, args.host or internal_ip(), args.port, args.home)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(uri)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
