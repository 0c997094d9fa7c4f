"""The parts of `gpu_check.py`: sizes, a GPU busy sampler, and one function per part.

Each part is `part_<name>(S, dev, emit)`: it measures with raysl's own code and the helpers of
the other benchmarks (`bench_loop.bare_throughput`, `bench_augment.measure`,
`bench_losses.term_timings` / `measure_search`, `bench_tune.write_space` / `run`) and calls
`emit(row)` once per finished measurement, so a part stopped by its time limit keeps what it
had finished. See `gpu_check.py` for what each part measures.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPOCH = 50_000  # images in a CIFAR-10 training epoch


@dataclass(frozen=True)
class Sizes:
    backbone: str = "resnet18"  # with the CIFAR stem (3x3 stride 1, no max-pool)
    batch: int = 512
    image: int = 32
    warmup: int = 5
    steps: int = 60  # timed steps per precision variant
    fit_steps: int = 40
    repeats: int = 2  # fit vs bare pairs
    log_every: int = 10
    aug_batch: int = 512
    aug_repeats: int = 5
    loss_batch: int = 512
    loss_banks: tuple[int, ...] = (16_384, 65_536)
    loss_repeats: int = 5
    search_banks: tuple[int, ...] = (16_384, 65_536, 262_144, 1_048_576)
    chunk: int = 4096
    trials: int = 4
    trial_cpu: float = 2.0
    trial_gpu: float = 0.25
    trial_epochs: int = 2
    trial_config: tuple[tuple[str, Any], ...] = (
        ("data.synthetic.num_samples", 4096), ("data.synthetic.image_size", 32),
        ("data.batch_size", 256), ("model.backbone", "resnet18"),
    )  # fmt: skip
    compile_backend: str = "inductor"


DRY = Sizes(backbone="convnet", batch=8, image=16, warmup=1, steps=2, fit_steps=2, repeats=1, log_every=1,
            aug_batch=16, aug_repeats=1, loss_batch=32, loss_banks=(256, 1024), loss_repeats=1,
            search_banks=(1024, 4096), chunk=1024, trial_cpu=0.5, trial_gpu=0.0, trial_epochs=1,
            trial_config=(), compile_backend="eager")  # fmt: skip


# ---- measuring helpers -----------------------------------------------------------------------
class GpuBusy:
    """Samples `nvidia-smi --query-gpu=utilization.gpu` every 100 ms while active (a context
    manager, or start/stop); `result()`: mean and median busy %, sample count; None without a
    GPU or nvidia-smi. With `apps=True` it also records the processes computing on the GPU."""

    def __init__(self, enabled: bool, apps: bool = False) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.apps, self.samples, self.pids = apps, [], []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]

    def _query(self, what: str) -> list[str]:
        out = subprocess.run(["nvidia-smi", "-i", self.gpu, f"--query-{what}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        return [line.strip() for line in out.splitlines() if line.strip()]

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples += [float(v) for v in self._query("gpu=utilization.gpu")]
                if self.apps:
                    self.pids.append(
                        {line.split(",")[0] for line in self._query("compute-apps=pid")}
                    )
            except (OSError, ValueError, subprocess.SubprocessError):
                pass

    def start(self) -> GpuBusy:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    __enter__ = start

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def result(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        out = {"gpu_busy_mean": statistics.fmean(self.samples),
               "gpu_busy_median": statistics.median(self.samples), "gpu_busy_samples": len(self.samples)}  # fmt: skip
        if self.apps:
            out["gpu_processes_max"] = max((len(p) for p in self.pids), default=0)
        return out


def _memory(dev: Any, reset: bool = False) -> dict[str, float]:
    import torch

    if dev.type != "cuda":
        return {}
    if reset:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return {}
    return {"peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30}


def _config(S: Sizes, steps: int, **extra: Any) -> Any:
    """SimCLR on synthetic 3-channel images, `steps` steps of S.batch: ResNet-18 with the CIFAR
    stem (the dry run: a ConvNet of width 8, the same code path at a hundredth of the cost)."""
    from raysl.config import Config

    n = steps * S.batch
    return Config().override({
        "data.source": "synthetic", "data.synthetic.num_samples": int(n / 0.9) + S.batch,
        "data.synthetic.image_size": S.image, "data.synthetic.channels": 3,
        "data.train_limit": n, "data.batch_size": S.batch, "model.backbone": S.backbone, "model.width": 8,
        "model.stem": "cifar", "augment.preset": "simclr", "epochs": 1, "optim.warmup_epochs": 0.0,
        "eval.test": False, "eval.bank_limit": 1024, "eval.knn_k": min(200, n), "log_every": S.log_every, **extra,
    })  # fmt: skip


def _per_epoch(img_s: float) -> dict[str, float]:
    return {"img_s": img_s, "s_per_epoch": EPOCH / img_s}


# ---- the parts (each runs in its own process; emit() appends one result line) ---------------
def part_env(S: Sizes, dev: Any, emit: Any) -> None:
    import platform

    import torch

    row = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda_build": torch.version.cuda, "device": str(dev), "cpus": os.cpu_count(),
           "nvidia_smi": shutil.which("nvidia-smi") is not None}  # fmt: skip
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        row.update(gpu=props.name, gpu_mem_gib=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported(),
                   cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32, gpus=torch.cuda.device_count())  # fmt: skip
    emit(row)


# name -> (bf16 autocast, channels-last, compiled); "fp32" keeps torch's defaults, under which
# cuDNN convolutions use TF32 (part env records the flags)
VARIANTS = {
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16+channels_last": (True, True, False),
    "bf16+channels_last+compile": (True, True, True),
}


def part_precision(S: Sizes, dev: Any, emit: Any) -> None:
    from bench_loop import bare_throughput

    from raysl.data import load_splits

    cfg = _config(S, S.steps)
    splits = load_splits(cfg.data, seed=cfg.seed)
    for name, (bf16, channels_last, compiled) in VARIANTS.items():
        row: dict[str, Any] = {"variant": name, "batch": S.batch, "steps": S.steps}
        try:
            busy = GpuBusy(dev.type == "cuda")
            _memory(dev, reset=True)
            img_s = bare_throughput(cfg, dev, bf16, channels_last, S.compile_backend if compiled else None,
                                    warmup=S.warmup + (3 if compiled else 0), timed=busy, splits=splits)  # fmt: skip
            row.update(_per_epoch(img_s), **(busy.result() or {}), **_memory(dev))
            if compiled:
                row["compile_backend"] = S.compile_backend
        except Exception as exc:  # one failing variant (e.g. a compile error) keeps the others
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        emit(row)


def _fit(cfg: Any) -> dict[str, Any]:
    """fit() once; its train/throughput, and GPU busy over its steps after the first report."""
    import torch

    from raysl.reporting import Recorder
    from raysl.train import fit

    class Busy(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.busy = GpuBusy(torch.cuda.is_available() and cfg.device != "cpu")

        def step(self, epoch: int, step: int, metrics: Any) -> None:
            super().step(epoch, step, metrics)
            last = self.info is not None and step == self.info.steps_per_epoch - 1
            self.busy.stop() if last else self.busy.start()

    recorder = Busy()
    try:
        fit(cfg, recorder)
    finally:
        recorder.busy.stop()
    metrics = recorder.epochs[-1]
    return {**_per_epoch(metrics["train/throughput"]), **(recorder.busy.result() or {}),
            "val_knn_top1": metrics["val/knn_top1"]}  # fmt: skip


def part_fit(S: Sizes, dev: Any, emit: Any) -> None:
    from bench_loop import bare_throughput

    from raysl.data import load_splits

    cfg = _config(S, S.fit_steps, device=dev.type)
    splits = load_splits(cfg.data, seed=cfg.seed)  # for the bare loop (fit() loads its own)
    cuda = dev.type == "cuda"  # fit()'s defaults there: bf16 autocast and channels-last
    bare_throughput(cfg, dev, cuda, cuda, splits=splits)  # warm-up: CUDA context, cuDNN
    raysl, bare = [], []
    for repeat in range(S.repeats):
        _memory(dev, reset=True)
        raysl.append(_fit(cfg))
        emit({"loop": "raysl fit()", "repeat": repeat, **raysl[-1], **_memory(dev)})
        busy = GpuBusy(cuda)
        _memory(dev, reset=True)
        bare.append(_per_epoch(bare_throughput(cfg, dev, cuda, cuda, timed=busy, splits=splits)))
        emit(
            {"loop": "bare", "repeat": repeat, **bare[-1], **(busy.result() or {}), **_memory(dev)}
        )
    ratios = [r["img_s"] / b["img_s"] for r, b in zip(raysl, bare)]
    emit({"loop": "ratio fit/bare", "median": statistics.median(ratios), "min": min(ratios),
          "max": max(ratios), "target": ">= 0.97"})  # fmt: skip


def part_fit_compile(S: Sizes, dev: Any, emit: Any) -> None:
    import functools

    import torch

    if S.compile_backend != "inductor":  # dry run: fit() calls torch.compile(online)
        torch.compile = functools.partial(torch.compile, backend=S.compile_backend)
    cfg = _config(S, S.fit_steps, device=dev.type)
    for compiled in (False, True):
        _memory(dev, reset=True)
        started = time.perf_counter()
        row = _fit(cfg.override({"compile": compiled}))
        emit({"loop": "raysl fit()", "compile": compiled, **row,
              "fit_wall_s": time.perf_counter() - started, **_memory(dev)})  # fmt: skip


def part_augment(S: Sizes, dev: Any, emit: Any) -> None:
    from bench_augment import measure

    result = measure(batch=S.aug_batch, views=2, size=32, repeats=S.aug_repeats, device=str(dev))
    for name in ("raysl", "torchvision", "kornia"):
        if name in result:
            r = result[name]
            emit(
                {
                    "impl": name,
                    "img_s": r["median"],
                    "min": r["min"],
                    "max": r["max"],
                    "runs": len(r["runs"]),
                }
            )
        elif name in result["skipped"]:
            emit({"impl": name, "skipped": result["skipped"][name]})
    for name, value in result["ratio"].items():
        emit({"impl": f"ratio {name}", "ratio": value})


def part_losses(S: Sizes, dev: Any, emit: Any) -> None:
    from bench_losses import term_timings

    for bank in S.loss_banks:
        for row in term_timings(S.loss_repeats, S.loss_batch, bank, dev):
            emit(row)


def part_neighbours(S: Sizes, dev: Any, emit: Any) -> None:
    from bench_losses import measure_search

    for bank in S.search_banks:
        for chunk in (S.chunk, bank):
            try:
                emit({"queries": 512, **measure_search(bank, chunk, S.loss_repeats, str(dev))})
            except Exception as exc:  # e.g. out of memory for one block of 1M rows
                emit(
                    {
                        "bank": bank,
                        "chunk": chunk,
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    }
                )


def part_ray(S: Sizes, dev: Any, emit: Any, out: Path) -> None:
    import ray
    import torch

    from raysl.launch.doctor import check_cluster_nodes
    from raysl.launch.session import ray_session

    with (
        tempfile.TemporaryDirectory(prefix="raysl-gpu-check-") as tmp,
        ray_session(log_file=out / "logs" / "ray.log"),
    ):
        try:  # (a) the doctor's node probe
            findings, summary = check_cluster_nodes(tmp, f"sqlite:///{tmp}/mlflow.db", timeout=120)
            gpu = [str(f) for f in findings if "GPU" in f.problem]
            ray_gpus, torch_gpus = ray.cluster_resources().get("GPU", 0), torch.cuda.device_count()
            verdict = (
                "no GPU"
                if not ray_gpus and not torch_gpus
                else ("ok" if not gpu else "GPU problem")
            )
            emit({"check": "doctor", "verdict": verdict, "ray_gpus": ray_gpus, "torch_gpus": torch_gpus,
                  "gpu_findings": gpu, "other_findings": [str(f)[:160] for f in findings if "GPU" not in f.problem],
                  "nodes": summary.split(";")[0]})  # fmt: skip
        except Exception as exc:
            emit({"check": "doctor", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        emit(_study(S, Path(tmp)))  # (b) the fractional study, in the same Ray session


def _study(S: Sizes, directory: Path) -> dict[str, Any]:
    from bench_tune import run, write_space

    resources = {"cpu": S.trial_cpu, **({"gpu": S.trial_gpu} if S.trial_gpu else {})}
    space = write_space(directory, "gpu_check_fractional", S.trials, S.trial_epochs,
                        config=dict(S.trial_config), resources=resources)  # fmt: skip
    busy = GpuBusy(S.trial_gpu > 0, apps=True)
    with busy:
        wall, trials, before, after = run(directory, space)
    events = sorted([(t["start"], 1) for t in trials] + [(t["end"], -1) for t in trials])
    running = overlap = 0
    for _, change in events:
        running += change
        overlap = max(overlap, running)
    return {"check": "study", "resources": resources, "trials_in_mlflow": len(trials),
            "trials_planned": S.trials, "max_concurrent_trials": overlap, "study_wall_s": wall,
            "trial_fit_s_median": statistics.median(t["fit"] for t in trials) if trials else None,
            "setup_s": before, "teardown_s": after, **(busy.result() or {})}  # fmt: skip


PARTS = {"env": part_env, "precision": part_precision, "fit": part_fit, "augment": part_augment,
         "losses": part_losses, "neighbours": part_neighbours, "ray": part_ray,
         "fit_compile": part_fit_compile}  # fmt: skip
