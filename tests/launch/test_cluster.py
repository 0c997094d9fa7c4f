"""Cluster files, `raysl launch --dry-run` and bad input: no cluster is started here.

The shipped files are checked with Ray's own autoscaler functions (`prepare_config` +
`validate_config`, what `ray up` runs) and with raysl's expectations.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.launch.test_ray_tune import study_file

CLUSTERS = sorted((REPO / "clusters").glob("*.yaml"))


def test_the_four_cluster_files_are_shipped() -> None:
    assert [p.name for p in CLUSTERS] == [
        "aws-gpu.yaml",
        "gcp-gpu.yaml",
        "kuberay-rayjob.yaml",
        "onprem.yaml",
    ]


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.stem)
def test_cluster_file_validates(path: Path) -> None:
    from raysl.launch.checks import check_cluster
    from raysl.launch.cluster import load_cluster_file

    text = path.read_text()
    assert text.startswith("# raysl on "), "opens with what it is for"
    assert "Edit:" in text and "Start:" in text, "says what to edit and how to start it"
    doc = yaml.safe_load(text)
    cluster = load_cluster_file(path)
    errors, warnings = check_cluster(cluster)
    assert errors == [] and warnings == [], [str(p) for p in errors + warnings]
    if cluster.kind == "ray":
        from ray.autoscaler._private.util import prepare_config, validate_config

        validate_config(prepare_config(doc))  # Ray's own check, as `ray up` runs it
        assert cluster.storage == doc["metadata"]["raysl"]["storage"]
        start = " ".join(doc["head_start_ray_commands"])
        assert "raysl.launch.head_services" in start and "0.0.0.0" not in start
        if cluster.provider != "local":
            gpu = [t for t in cluster.node_types if t.gpu > 0]
            assert gpu and all(t.min_workers == 0 and not t.head for t in gpu)
            assert not any(t.gpu for t in cluster.node_types if t.head)  # CPU head
    else:
        groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert any(
            g["minReplicas"] == 0 and g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            for g in groups
        )  # fmt: skip


def _space(tmp_path: Path, gpu: float = 0.0, max_concurrent: object = 2, cpu: float = 1) -> Path:
    path = study_file(tmp_path, name="tiny_study", num_samples=2, scheduler="none")
    doc = yaml.safe_load(path.read_text())
    doc["tune"]["resources"] = {"cpu": cpu, "gpu": gpu}
    if max_concurrent is None:
        del doc["tune"]["max_concurrent"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.stem)
def test_launch_dry_run_prints_the_commands(path: Path, tmp_path: Path) -> None:
    from raysl.launch.cluster import load_cluster_file

    cluster = load_cluster_file(path)
    space = _space(tmp_path, gpu=0.5, max_concurrent=None)
    rel = path.relative_to(REPO)
    proc = run_cli(
        "launch", str(rel), str(space), "--set", "optim.lr=0.2", "--down", "--dry-run", cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    commands = [
        line.split(". ", 1)[1] for line in proc.stdout.splitlines() if re.match(r"\d+\. ", line)
    ]
    runs = "/home/ray/raysl/runs" if cluster.kind == "kuberay" else "~/raysl/runs"
    source = "/home/ray/space/tiny_study.yaml" if cluster.kind == "kuberay" else "tiny_study.yaml"
    submit = (
        f"mkdir -p {runs} && cp {source} {runs}/ && cd {runs} && raysl tune tiny_study.yaml "
        f"--address auto --storage {cluster.storage} --out tiny_study -q"
    )
    if cluster.kind == "ray":
        assert commands[0] == f"ray up -y {rel}"
        assert commands[1] == f"ray exec {rel} 'cat ~/raysl/mlflow_uri'"
        assert commands[2] == f"ray dashboard {rel} --port 8265 &"
        job = re.fullmatch(
            r"ray job submit --address http://127.0.0.1:8265 --submission-id (\S+) "
            r"--working-dir (\S+) -- (.*)",
            commands[3],
        )
        assert job, commands[3]
        assert not Path(job.group(2)).exists()  # a dry run writes nothing
        entrypoint = shlex.split(job.group(3))[0]  # one quoted argument
        assert commands[4].startswith("# ssh ") and "-L 5000:HEAD_INTERNAL_IP:5000" in commands[4]
        assert commands[-1] == f"ray down -y {rel}" and len(commands) == 6
    else:
        assert commands[0] == (
            f"kubectl create configmap raysl-space --from-file=tiny_study.yaml={space} "
            "--dry-run=client -o yaml | kubectl apply -f -"
        )
        assert re.fullmatch(
            r"kubectl apply -f \S+raysl-rayjob-raysl-study-tiny-study\.yaml", commands[1]
        )
        assert not Path(commands[1].split()[-1]).exists()
        assert commands[2] == "kubectl logs -f --pod-running-timeout=30m job/raysl-study-tiny-study"
        assert "port-forward service/" in commands[3] and "5000:5000" in commands[3]
        assert commands[-1] == "kubectl delete rayjob raysl-study-tiny-study" and len(commands) == 5
        entrypoint = proc.stdout.split("with entrypoint: ", 1)[1].splitlines()[0]
    assert entrypoint.startswith(submit), entrypoint
    assert "--set optim.lr=0.2" in entrypoint
    if cluster.provider == "local":  # resources unknown until the machines run Ray
        assert "tune.max_concurrent" not in entrypoint
    else:  # auto would see no GPU node at the start; fill the cluster at its largest instead
        workers = max(t.max_workers for t in cluster.node_types)
        gpus = max(t.gpu for t in cluster.node_types)
        assert f"--set tune.max_concurrent={int(workers * gpus / 0.5)}" in entrypoint


def _bad(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A broken copy of aws-gpu.yaml and the text its error must contain."""
    text = (REPO / "clusters" / "aws-gpu.yaml").read_text()
    path = tmp_path / "bad.yaml"
    if name == "missing":
        return tmp_path / "nope.yaml", "no such file"
    if name == "yaml":
        text = text.replace("max_workers: 4\nidle", "max_workers: [4\nidle")
        expected = "YAML syntax error"
    elif name == "schema":
        text = text.replace("idle_timeout_minutes: 10", "idle_timeout_minutes: 10\nmax_worker: 3")
        expected = "max_worker"
    elif name == "resources":
        text = text.replace("resources: {CPU: 4, GPU: 1}", "resources: {CPU: 4, GPU: one}")
        expected = "available_node_types.gpu_spot.resources.GPU"
    elif name == "storage":
        text = text.replace("    storage: s3://CHANGE-ME-bucket/raysl", "    owner: me")
        expected = "metadata.raysl.storage: shared storage is not set"
    else:  # a node-type name that does not exist
        text = text.replace("head_node_type: head", "head_node_type: hed")
        expected = "head_node_type"
    path.write_text(text)
    return path, expected


@pytest.mark.parametrize("case", ["missing", "yaml", "schema", "resources", "storage", "head"])
def test_bad_cluster_file_is_one_clear_error(case: str, tmp_path: Path) -> None:
    path, expected = _bad(tmp_path, case)
    space = _space(tmp_path)
    proc = run_cli("launch", str(path), str(space))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), proc.stderr
    assert expected in lines[0], lines[0]
    assert proc.stdout == ""  # nothing was run


def test_resources_that_fit_no_node_are_refused(tmp_path: Path) -> None:
    space = _space(tmp_path, gpu=1, cpu=6)  # g5.xlarge: 4 CPUs, 1 GPU; the head has no GPU
    proc = run_cli("doctor", str(REPO / "clusters" / "aws-gpu.yaml"), "--space", str(space))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tune.resources: a trial worker needs 6 CPU and 1 GPU on one node" in proc.stdout
    assert "unhealthy: 1 problem(s)" in proc.stdout
    launch = run_cli("launch", str(REPO / "clusters" / "aws-gpu.yaml"), str(space), "--dry-run")
    assert launch.returncode == 2 and "tune.resources" in launch.stderr and launch.stdout == ""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "exposes a server on every interface"),
        ("  ssh_user: ubuntu", "  ssh_user: ubuntu\n  # aws_secret_access_key: abc", "holds an AWS secret key"),
        ("python -m raysl.launch.head_services ~/ray_bootstrap_config.yaml", "echo none", "no MLflow server is started on the head"),
        ("resources: {CPU: 4, GPU: 1}", "resources: {CPU: 4}", "no worker node type declares GPUs"),
    ],
)  # fmt: skip
def test_unsafe_or_incomplete_cluster_is_refused(
    old: str, new: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "aws.yaml"
    text = (REPO / "clusters" / "aws-gpu.yaml").read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    proc = run_cli("launch", str(path), str(_space(tmp_path)), "--dry-run")
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert expected in proc.stderr and str(path) in proc.stderr, proc.stderr


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`raysl ARGS` in this process (the code a user runs, without a new interpreter)."""
    from raysl.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


_SECURITY = {  # case: (file, old, new, what the doctor's line says); new is written by the test
    "quoted dashboard host": ("aws-gpu", "--dashboard-host=127.0.0.1", '--dashboard-host="0.0.0.0"', "`--dashboard-host=0.0.0.0` exposes a server on every interface"),
    "single-quoted IPv6 any": ("aws-gpu", "--dashboard-host=127.0.0.1", "--dashboard-host '::'", "`--dashboard-host ::` exposes a server"),
    "bracketed IPv6 any": ("gcp-gpu", "--dashboard-host=127.0.0.1", "--dashboard-host=[::]", "`--dashboard-host=[::]` exposes a server"),
    "mlflow in head_setup_commands": ("aws-gpu", "setup_commands:\n", "head_setup_commands:\n  - nohup mlflow server --host=0.0.0.0 --port 5000 &\nsetup_commands:\n", "head_setup_commands.0: `--host=0.0.0.0` exposes a server"),
    "mlflow -h in worker setup": ("onprem", "setup_commands:\n", "worker_setup_commands:\n  - mlflow server -h 0.0.0.0\nsetup_commands:\n", "worker_setup_commands.0: `-h 0.0.0.0` exposes"),
    "gunicorn bind": ("aws-gpu", "setup_commands:\n", "head_setup_commands:\n  - mlflow server --gunicorn-opts '--bind 0.0.0.0:5000'\nsetup_commands:\n", "`--bind 0.0.0.0` exposes"),
    "kuberay dashboard-host": ("kuberay-rayjob", "dashboard-host: 127.0.0.1", "dashboard-host: 0.0.0.0", "rayStartParams.dashboard-host: `dashboard-host: 0.0.0.0` exposes"),
    "kuberay dashboard-host IPv6": ("kuberay-rayjob", "dashboard-host: 127.0.0.1", 'dashboard-host: "::"', "`dashboard-host: ::` exposes"),
    "temporary AWS credentials": ("aws-gpu", "setup_commands:\n", "setup_commands:\n  - export AWS_ACCESS_KEY_ID=ASIAIOSFODNN7EXAMPLE AWS_SESSION_TOKEN='IQoJb3JpZ2luX2VjEJr'\n", "the file holds an AWS access key id|setup_commands.0: AWS_SESSION_TOKEN is set to a literal value"),
    "AWS key id in a comment": ("onprem", "cluster_name:", "# AKIAIOSFODNN7EXAMPLE\ncluster_name:", "the file holds an AWS access key id"),
    "password in a command": ("onprem", "  - ray stop\n", "  - DB_PASSWORD=hunter2 ray stop\n", "head_start_ray_commands.0: DB_PASSWORD is set to a literal value"),
    "secret in kuberay env": ("kuberay-rayjob", '- {name: MLFLOW_TRACKING_URI, value: "http://127.0.0.1:5000"}', '- {name: MLFLOW_TRACKING_URI, value: "http://127.0.0.1:5000"}\n                - {name: WANDB_SECRET_KEY, value: "abc123"}', "containers.0.env.1.value: WANDB_SECRET_KEY has a literal value"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_SECURITY))
def test_the_doctor_flags_unsafe_files_and_launch_refuses_them(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stem, old, new, expected = _SECURITY[case]
    text = (REPO / "clusters" / f"{stem}.yaml").read_text()
    assert old in text
    path = tmp_path / f"{stem}.yaml"
    path.write_text(text.replace(old, new, 1))
    space = _space(tmp_path)
    code, out, err = _cli(capsys, "doctor", str(path))
    assert code == 1, out + err
    problems = [line for line in out.splitlines() if line.startswith(str(path))]
    wanted = expected.split("|")
    assert len(problems) == len(wanted), out
    for want, line in zip(wanted, problems, strict=True):
        assert want in line, line
    assert out.strip().endswith(f"unhealthy: {len(wanted)} problem(s)")
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in (["--dry-run"], []):  # refused before a plan is printed or anything runs
        code, out, err = _cli(capsys, "launch", str(path), str(space), *extra)
        assert code == 2 and out == "", out + err
        lines = err.strip().splitlines()
        assert len(lines) == (1 if len(wanted) == 1 else len(wanted) + 1), err
        assert all(want in err for want in wanted) and str(path) in err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("stem", "old", "new"),
    [
        ("aws-gpu", "--dashboard-host=127.0.0.1", "--dashboard-host=::1"),  # IPv6 loopback
        ("aws-gpu", "setup_commands:\n", "setup_commands:\n  - export AWS_SESSION_TOKEN=$(cat /run/aws-token)\n"),
        ("onprem", "  - ray stop\n", '  - DB_PASSWORD="${DB_PASSWORD}" ray stop\n'),
        ("kuberay-rayjob", '- {name: MLFLOW_TRACKING_URI, value: "http://127.0.0.1:5000"}', '- {name: MLFLOW_TRACKING_URI, value: "http://127.0.0.1:5000"}\n                - {name: HF_TOKEN, valueFrom: {secretKeyRef: {name: hf, key: token}}}'),
    ],
)  # fmt: skip
def test_references_and_loopback_binds_pass_the_doctor(
    stem: str, old: str, new: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Secrets taken from the environment or a secret store, and ::1, are what the fix says."""
    text = (REPO / "clusters" / f"{stem}.yaml").read_text()
    assert old in text
    path = tmp_path / f"{stem}.yaml"
    path.write_text(text.replace(old, new, 1))
    code, out, err = _cli(capsys, "doctor", str(path))
    assert code == 0 and out.splitlines()[0].startswith("healthy: "), out + err
