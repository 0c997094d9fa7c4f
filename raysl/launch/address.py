"""`--address`: is a Ray cluster there? Asked in a few seconds, before anything starts.

`ray.init(address=HOST:PORT)` with nothing behind the address retries the GCS connection for
minutes, prints only Ray's C++ lines ("Failed to connect to GCS ... within 5 seconds") and
does not stop on Ctrl-C. `check_address` opens a TCP connection to the address first (the
head's GCS port, 6379 by default, or a Ray Client server for `ray://`) and refuses it in one
line when nothing answers. `auto` is resolved as Ray resolves it (`RAY_ADDRESS`, then the
cluster `ray start` recorded on this machine), so a stale record is caught too.

Imports no Ray at module level: the CLI calls this before the heavy stack loads.
"""

from __future__ import annotations

import os
import socket

from raysl.errors import ConfigError, Problem, cut

PROBE_TIMEOUT_S = 3.0
_FIX = "start one (ray start --head) or fix --address"


def check_address(
    address: str | None, timeout: float = PROBE_TIMEOUT_S, key: str = "--address"
) -> None:
    """Refuse `address` when no Ray cluster answers there within `timeout` seconds.

    None and "local" (start a local cluster) pass. "auto" is resolved first: no cluster found
    on this machine is refused too.

    Raises:
        ConfigError: one line naming `key`: the address is malformed, cannot be resolved, or
            nothing accepts a connection there.
    """
    if address is None or address == "local":
        return
    shown = cut(address, 120)
    target = _resolve_auto() if address == "auto" else address
    if target == "":  # this Ray resolves "auto" in a way not known here: leave it to ray.init
        return
    if target is None:
        raise ConfigError(
            Problem(
                "no Ray cluster answers at auto (none was started on this machine with `ray "
                f"start`, and RAY_ADDRESS is not set); {_FIX}",
                key=key,
            )
        )
    host, port, client = _host_port(target, key)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
        reason = None if client else _not_a_gcs(host, port, timeout)
        if reason is None:
            return
    except socket.gaierror as error:
        reason = f"cannot resolve {cut(host, 80)} ({error.strerror or error})"
    except OSError as error:
        reason = error.strerror or type(error).__name__
        if isinstance(error, TimeoutError) or "timed out" in str(error):
            reason = f"no answer within {timeout:g} s"
    via = f" ({target})" if target != address else ""
    raise ConfigError(Problem(f"no Ray cluster answers at {shown}{via}: {reason}; {_FIX}", key=key))


def _not_a_gcs(host: str, port: int, timeout: float) -> str | None:
    """None when a Ray GCS answers a gRPC call at host:port; else why not. Something else can
    accept the connection (another server, a proxy), and ray.init then retries for minutes.

    The call is `NodeInfoGcsService.GetClusterId`, the first one `ray.init` makes; any answer
    from Ray's service (an error status such as UNAUTHENTICATED included) is a GCS.
    """
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # no gRPC here: the TCP connection is all that can be asked
        return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no answer within {timeout:g} s"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
                return "something accepts connections there, but it is not a Ray head's GCS"
    return None


def _host_port(address: str, key: str) -> tuple[str, int, bool]:
    """(host, port, Ray Client) of `HOST:PORT`, `[IPv6]:PORT` or `ray://HOST:PORT` (10001)."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    elif scheme != "ray":
        raise ConfigError(
            Problem(
                f"{cut(address, 120)} is not a Ray address; give auto, HOST:PORT (the head's "
                "GCS port, 6379) or ray://HOST:10001",
                key=key,
            )
        )
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):  # [IPv6]:PORT
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.rpartition(":")
    default = 10001 if scheme == "ray" else None
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        port = None
    if not host or port is None or not 0 < port < 65536:
        raise ConfigError(
            Problem(
                f"{cut(address, 120)} is not HOST:PORT; give auto, HOST:PORT (the head's GCS "
                "port, 6379) or ray://HOST:10001",
                key=key,
            )
        )
    return host, port, scheme == "ray"


def _resolve_auto() -> str | None:
    """What `ray.init(address="auto")` would join: RAY_ADDRESS, else the cluster recorded by
    `ray start` (or any GCS running here); None when there is none, "" when unknown."""
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return env
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        return canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError:
        return None
    except Exception:  # a Ray without this private helper: let ray.init resolve it
        return ""
