"""Scaling on this machine, in one run: plain process vs 1 and 2 Ray Train workers, Ray Train's
fixed start-up cost, and the bytes each loss term moves between processes per step.

(1) Throughput. The same config (Fashion-MNIST when installed, else synthetic 1x28x28;
    ConvNet width 16, global batch 256) trained for one epoch of `--steps` steps: in this
    process (`fit`, 2 threads), on 1 Ray Train worker (2 CPUs) and on 2 workers (1 CPU each,
    gloo DDP). Throughput is `train/throughput` (training steps only); start-up is the wall
    time until the first step report, minus nothing (it is what a user waits for).
(2) Communication. For every loss term, one training step in a real 2-process gloo group with
    each collective counted: bytes sent per rank per step, by operation. This is what a
    GPU cluster pays over NVLink/InfiniBand per step, and it does not depend on the hardware.

    python benchmarks/bench_scaling.py [--steps 20] [--repeats 3] [--skip-ray]
    python benchmarks/bench_scaling.py --smoke    # 2 steps, 1 repeat, 1 term (~45 s)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysl.config import Config
from raysl.reporting import Recorder, Reporter, RunInfo
from raysl.train import fit

FASHION = Path("/usr/share/datasets/fashion-mnist")
BATCH = 256


def make_config(steps: int, **extra: Any) -> Config:
    data = {"data.source": "fashion_mnist"} if FASHION.is_dir() else {
        "data.source": "synthetic", "data.synthetic.num_samples": 2 * steps * BATCH,
        "data.synthetic.image_size": 28, "data.synthetic.channels": 1,
    }  # fmt: skip
    return Config().override({
        **data, "epochs": 1, "log_every": 1, "data.batch_size": BATCH, "data.train_limit": steps * BATCH,
        "model.width": 16, "augment.preset": "simclr", "eval.test": False, "eval.bank_limit": 512, **extra,
    })  # fmt: skip


class _Clock(Recorder):
    """Records the wall time of the first step report."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started, self.first_step = started, None

    def step(self, epoch: int, step: int, metrics: Any) -> None:
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.started
        super().step(epoch, step, metrics)

    def start(self, info: RunInfo) -> None:
        super().start(info)


def run_plain(cfg: Config) -> dict[str, float]:
    started = time.perf_counter()
    clock = _Clock(started)
    fit(cfg, clock)
    return {
        "throughput": clock.epochs[-1]["train/throughput"],
        "startup": clock.first_step,
        "wall": time.perf_counter() - started,
    }


def run_ray(cfg: Config, workers: int) -> dict[str, float]:
    from raysl.launch.ray_train import Scale, train_on_ray

    started = time.perf_counter()
    clock = _Clock(started)
    with tempfile.TemporaryDirectory() as storage:
        train_on_ray(
            cfg,
            f"bench-{workers}",
            Scale(workers, 0.0, 2.0 / workers),
            storage,
            clock,
            log_file=Path(storage) / "ray.log",
        )
    return {
        "throughput": clock.epochs[-1]["train/throughput"],
        "startup": clock.first_step,
        "wall": time.perf_counter() - started,
    }


# ---- (2) communication -----------------------------------------------------------------------
TERMS: dict[str, dict[str, Any]] = {
    "infonce": {},
    "infonce (MoCo queue 4096)": {"loss.infonce.queue_size": 4096},
    "supcon": {"loss.infonce.weight": 0.0, "loss.supcon.weight": 1.0},
    "selfcon": {"loss.infonce.weight": 0.0, "loss.selfcon.weight": 1.0, "augment.views": 1},
    "similarity (BYOL)": {"loss.infonce.weight": 0.0, "loss.similarity.weight": 1.0},
    "icc": {"loss.infonce.weight": 0.0, "loss.icc.weight": 1.0},
    "mean_shift (CMSF 2q)": {
        "loss.infonce.weight": 0.0,
        "loss.mean_shift.weight": 1.0,
        "loss.mean_shift.constraint": "2q",
        "loss.mean_shift.bank_size": 4096,
    },
    "bsim (+ infonce)": {"loss.bsim.weight": 1.0},
    "mining": {
        "loss.infonce.weight": 0.0,
        "loss.mining.weight": 1.0,
        "loss.mining.warmup_epochs": 0.0,
    },
}


def _count_collectives(rank: int, world: int, overrides: dict[str, Any]) -> dict[str, int]:
    """Run a 2-step epoch (global batch 256) and count the bytes each collective sends."""
    import torch.distributed as dist

    from raysl.runtime import Runtime

    counts: dict[str, int] = {}
    originals = {
        name: getattr(dist, name)
        for name in ("all_gather", "all_reduce", "broadcast", "all_gather_into_tensor")
    }

    def counting(name: str):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tensor = args[1] if name in ("all_gather", "all_gather_into_tensor") else args[0]
            counts[name] = counts.get(name, 0) + tensor.numel() * tensor.element_size()
            return originals[name](*args, **kwargs)

        return wrapper

    cfg = Config().override({**overrides_base(), **overrides})
    for name in originals:
        setattr(dist, name, counting(name))
    recorder = Recorder()
    try:
        # count only the training steps: stop before the evaluation at the end of the epoch
        class StopAfterSteps(Reporter):
            def step(self, epoch: int, step: int, metrics: Any) -> None:
                if step == 1:
                    raise _Stop

        with contextlib.suppress(_Stop):
            fit(cfg, StopAfterSteps(), Runtime(torch.device("cpu"), rank, world))
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    del recorder
    return counts


class _Stop(Exception):
    pass


def overrides_base() -> dict[str, Any]:
    return {
        "data.source": "synthetic", "data.synthetic.num_samples": 1024, "data.synthetic.image_size": 28,
        "data.synthetic.channels": 1, "data.batch_size": BATCH, "model.width": 8, "log_every": 1, "epochs": 1,
    }  # fmt: skip


def measure_communication(labels: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import run_distributed

    out = {}
    for label, overrides in TERMS.items():
        if labels is not None and label not in labels:
            continue
        counts = run_distributed(_count_collectives, 2, overrides)[0]
        out[label] = {k: v / 2 for k, v in counts.items()}  # two steps -> per step
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-comm", action="store_true")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps, 1 repeat, plain vs 2 Ray Train workers, one term's bytes (the tests)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats = 2, 1
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, batch {BATCH}, {args.steps} steps/measurement"
    )
    if not args.skip_ray:
        cfg = make_config(args.steps)
        rows: dict[str, list[dict[str, float]]] = {
            "plain process": [],
            "Ray Train, 1 worker": [],
            "Ray Train, 2 workers": [],
        }
        if args.smoke:
            del rows["Ray Train, 1 worker"]
        for _ in range(args.repeats):
            rows["plain process"].append(run_plain(cfg))
            if "Ray Train, 1 worker" in rows:
                rows["Ray Train, 1 worker"].append(run_ray(cfg, 1))
            rows["Ray Train, 2 workers"].append(run_ray(cfg, 2))
        base = statistics.median(r["throughput"] for r in rows["plain process"])
        print(
            "(1) throughput (img/s, training steps) and time to the first step (s), median [min-max]:"
        )
        for label, runs in rows.items():
            tp = [r["throughput"] for r in runs]
            st = [r["startup"] for r in runs]
            print(
                f"    {label:22s} {statistics.median(tp):7,.0f} [{min(tp):,.0f}-{max(tp):,.0f}] img/s "
                f"(x{statistics.median(tp) / base:.2f})   first step after {statistics.median(st):5.1f} s [{min(st):.1f}-{max(st):.1f}]"
            )
    if not args.skip_comm:
        print("(2) bytes sent per rank per training step, world size 2, global batch 256, D = 128:")
        labels = ("infonce",) if args.smoke else None
        for label, counts in measure_communication(labels).items():
            total = sum(counts.values())
            detail = ", ".join(f"{k} {v / 1024:,.1f} KiB" for k, v in sorted(counts.items()))
            print(f"    {label:28s} {total / 1024:9,.1f} KiB   ({detail})")


if __name__ == "__main__":
    main()
