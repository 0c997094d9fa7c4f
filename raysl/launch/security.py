"""Security checks of a cluster file: servers open on every interface, credentials in the file.

Every string of the file is scanned (each command of every command list, `rayStartParams`,
container commands, args and env, docker options, ...), whatever its quoting:
`--dashboard-host="0.0.0.0"`, `--host '::'`, `--dashboard-host=[::]` and `dashboard-host: 0.0.0.0`
are the same bind. Credentials are matched in the raw text (comments included), as key ids
(AWS `AKIA`/`ASIA`, GitHub, Hugging Face), private keys, passwords in URLs
(`https://user:pw@host`), tokens given to a command (`wandb login KEY`, `--token T`), and as
variables named `*_TOKEN`, `*_PASSWORD`, `*_SECRET*`, `*_API_KEY`, `*_ACCESS_KEY` given a literal
value (`WANDB_API_KEY=abc`, `{name: HF_TOKEN, value: abc}`); a reference (`$X`, `${X}`,
`$(cmd)`, a Kubernetes `valueFrom`) is fine.

A KubeRay container binds inside its pod, whose address is reachable from the pod network
only (and `kubectl port-forward` needs a bind on the pod's loopback or every interface), so in
a RayJob only the Ray dashboard (`dashboard-host`, which accepts jobs, i.e. runs code) must stay
on 127.0.0.1; on a `ray up` cluster every server must (the nodes are VMs that may have public
addresses): bind MLflow to the head's internal IP as `raysl.launch.head_services` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from raysl.errors import Problem
from raysl.launch.cluster import ClusterFile

# an address that means "every interface": 0.0.0.0, or IPv6's :: (not ::1, the loopback)
_ANY = r"(?:0\.0\.0\.0|\[?::\]?)(?![0-9A-Fa-f.])"
# `--dashboard-host 0.0.0.0`, `--host=::`, `-h 0.0.0.0`, `--bind 0.0.0.0:5000`, `HOST=0.0.0.0`
_BIND = re.compile(
    r"(?<![\w-])(--?[\w-]*host|--bind|-b|-h|[A-Z][A-Z0-9_]*HOST)(?:\s*=\s*|\s+)" + _ANY, re.I
)
_DASHBOARD = re.compile(r"dashboard[\w-]*host", re.I)

_KEY_IDS = (
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"aws_secret_access_key|secret_access_key", re.I), "an AWS secret key"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\"private_key\"\s*:"), "a service-account key"),
    (re.compile(r"^\s*gcp_credentials\s*:", re.M), "GCP credentials"),
    (re.compile(r"\b(?:ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}"), "a GitHub token"),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), "a Hugging Face token"),
    # `https://user:password@host` (an MLflow server's basic auth, a database URI)
    (
        re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?!\$)[^/\s@'\"]+@", re.I),
        "a password in a URL",
    ),
    # `wandb login KEY`, `huggingface-cli login --token T`, `--api-key K`, `--password P`
    (
        re.compile(
            r"(?:\b(?:wandb|huggingface-cli|hf)(?:\s+auth)?\s+login(?:\s+--\S+)*\s+|"
            r"--(?:api[-_]?key|token|password|secret)(?:=|\s+))['\"]?(?![$-])[^\s'\"]{6,}",
            re.I,
        ),
        "a credential given on a command line",
    ),
)
# a credential variable: *_TOKEN, *_PASSWORD, *_SECRET* (upper case, as environment variables are)
# (WANDB_API_KEY, MLFLOW_TRACKING_PASSWORD, HF_TOKEN, HUGGING_FACE_HUB_TOKEN, *_ACCESS_KEY ...)
_SECRET_NAME = re.compile(
    r"^[A-Z][A-Z0-9_]*(?:_TOKEN|_PASSWORD|_PASSWD|_SECRET[A-Z0-9_]*|_API_?KEY|_ACCESS_KEY|_AUTH_KEY|_PRIVATE_KEY)$"
)
# NAME=value in a command (`export X=..`, `X=.. cmd`, `-e X=..`, `--env X=..`)
_ASSIGNMENT = re.compile(r"(?<![\w$])([A-Z][A-Z0-9_]*)=(\S*)")
_QUOTES = str.maketrans("", "", "\"'`\\")

_BIND_FIX = (
    "keep the dashboard on 127.0.0.1 (reach it with `ray dashboard CLUSTER.yaml` or "
    "kubectl port-forward) and MLflow on the head's internal IP (raysl.launch.head_services)"
)


def security_problems(cluster: ClusterFile) -> list[Problem]:
    """Problems of `cluster`: servers open on every interface, credentials in the file."""
    text = file_text(cluster.path)
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()

    def add(message: str, key: str) -> None:
        if (key, message) not in seen:
            seen.add((key, message))
            line = _line(cluster, key)
            problems.append(Problem(message, key=key, where=str(cluster.path), line=line))

    for pattern, what in _KEY_IDS:
        if pattern.search(text):
            add(
                f"the file holds {what}; remove it and use instance roles / service accounts "
                "(nodes) and your local profile (ray up)",
                "",
            )
    kuberay = cluster.kind == "kuberay"
    for key, name, value in _scalars(cluster.doc):
        if isinstance(name, str) and value is not None and not isinstance(value, (dict, list)):
            flat = str(value).translate(_QUOTES).strip()
            # a start parameter (`dashboard-host: 0.0.0.0`) or a k8s env entry (HOST/value)
            opens = name.lower().endswith("host") and re.fullmatch(_ANY, flat)
            if opens and (not kuberay or _DASHBOARD.search(name)):
                add(f"`{name}: {flat}` {_OPEN}; {_BIND_FIX}", key)
            if _SECRET_NAME.match(name) and _literal(flat):
                add(f"{name} has a literal value; {_SECRET_FIX}", key)
        if not isinstance(value, str):
            continue
        flat = value.translate(_QUOTES)
        for match in _BIND.finditer(flat):
            if not kuberay or _DASHBOARD.search(match.group(1)):
                add(f"`{match.group(0).strip()}` {_OPEN}; {_BIND_FIX}", key)
        for match in _ASSIGNMENT.finditer(flat):
            if _SECRET_NAME.match(match.group(1)) and _literal(match.group(2)):
                add(f"{match.group(1)} is set to a literal value; {_SECRET_FIX}", key)
    return problems


_OPEN = "exposes a server on every interface"
_SECRET_FIX = (
    "pass secrets from the environment or a secret store (a Kubernetes secretKeyRef, "
    "instance roles), never in the file"
)


def file_text(path: Path) -> str:
    """The file's raw text, comments included (credentials hide there too), in any encoding."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8"
    return data.decode(encoding, errors="replace")


def _literal(value: str) -> bool:
    """A value written in the file, not a reference to one ($X, ${X}, $(cmd))."""
    value = value.strip().strip(";&|")
    return bool(value) and not value.startswith("$")


def _scalars(doc: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, name, value) for every entry of `doc`: mapping items with their key as the
    name, list items with no name, Kubernetes env entries `{name: N, value: V}` as N = V."""
    if isinstance(doc, Mapping):
        if isinstance(doc.get("name"), str) and "value" in doc:
            yield f"{prefix}.value" if prefix else "value", doc["name"], doc["value"]
        for k, v in doc.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            yield key, str(k), v
            yield from _scalars(v, key)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            key = f"{prefix}.{i}"
            yield key, None, item
            yield from _scalars(item, key)


def _line(cluster: ClusterFile, key: str) -> int | None:
    """The line of `key`, or of its nearest ancestor the file reader knows (list items)."""
    parts = key.split(".")
    while parts:
        line = cluster.lines.get(".".join(parts))
        if line:
            return line
        parts.pop()
    return None
