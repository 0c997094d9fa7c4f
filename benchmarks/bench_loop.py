"""raysl's training loop against a bare hand-written PyTorch loop, and batched augmentation
against torchvision's per-sample pipeline, measured in one run.

(1) Loop overhead. Same model (raysl's ConvNet + projector), same data (Fashion-MNIST when
    the Debian package is installed, else synthetic 1x28x28), same augmentation (raysl
    `Augment`, simclr preset), same optimizer (SGD, momentum 0.9, no weight decay on
    biases/norms), same NT-Xent loss. The bare loop is the dozen lines a researcher would
    write; raysl is `fit()` with everything it does per step (lr schedule, per-step
    augmentation seeding, loss-term bookkeeping, finiteness checks, reporting). Both time
    the training steps of one epoch; raysl's evaluation after the epoch is not counted.
    Runs alternate (raysl, bare, raysl, ...) so drifts of this shared machine hit both.
    Target: raysl / bare >= 0.97.
(2) Augmentation: `benchmarks/bench_augment.py`'s `measure` (raysl vs torchvision v2 per
    sample vs kornia, SimCLR, 2 views, 3x32x32). Target: raysl / torchvision >= 5.
(3) The CPU step and a trial's evaluation: `fit()` at its default (fp32, NCHW on CPU) against
    `fit()` with each CPU option (`memory_format: channels_last`, `precision: bf16`
    (autocast), both, `compile: true`) and, with `--against REV`, against the raysl of git
    revision REV itself ("the previous version": checked out with `git worktree`, timed by
    this file's own `run_timings` in a subprocess whose `raysl` is REV's). The run is a
    bench_search trial in miniature: 2 epochs on 10 % of Fashion-MNIST (5,400 images; kNN bank
    that subset, 6,000 val queries, k = 200 and 20 every epoch), then the final report (test
    kNN, both linear probes). Three figures each: training img/s (the steps of epoch 2), the
    whole of epoch 2 with its val kNN (training images per second of epoch wall) and the
    final report's seconds. Variants alternate within each repeat; ratios over the default
    and over REV. None of the options is the CPU default: each changes results (RESULTS.md,
    "The CPU step").

    python benchmarks/bench_loop.py [--steps 30] [--repeats 5] [--batch 256] [--width 16]
    python benchmarks/bench_loop.py --skip-loop --skip-augment --against 68db068   # (3) vs a commit
    python benchmarks/bench_loop.py --smoke     # tiny sizes, a few seconds (the test suite)

`bare_throughput` also takes a device, bf16 autocast, channels-last and torch.compile, so
`gpu_check.py` times the same bare loop on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raysl.augment import Augment
from raysl.config import Config
from raysl.data import Splits, load_splits
from raysl.models import build_model
from raysl.optim import param_groups
from raysl.reporting import Recorder
from raysl.train import fit

FASHION = Path("/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def make_config(steps: int, batch: int, width: int, fashion: bool = True) -> Config:
    data = {"data.source": "fashion_mnist"} if fashion and FASHION.is_dir() else {
        "data.source": "synthetic", "data.synthetic.num_samples": 4 * steps * batch,
        "data.synthetic.image_size": 28, "data.synthetic.channels": 1,
    }  # fmt: skip
    return Config().override({
        **data, "epochs": 1, "data.batch_size": batch, "data.train_limit": steps * batch,
        "model.width": width, "augment.preset": "simclr", "optim.warmup_epochs": 0.0,
        "eval.test": False, "eval.bank_limit": batch, "eval.knn_k": min(200, batch), "log_every": 20,
    })  # fmt: skip


def raysl_throughput(cfg: Config) -> float:
    recorder = Recorder()
    fit(cfg, recorder)
    return recorder.epochs[-1]["train/throughput"]


def trial_config(batch: int, width: int, smoke: bool) -> Config:
    """(3): a bench_search trial in miniature (2 epochs on 10 % of Fashion-MNIST, val kNN at
    k = 200 and 20 every epoch, the final test kNN and linear probes)."""
    data = {"data.source": "fashion_mnist", "data.train_fraction": 0.1}
    if smoke or not FASHION.is_dir():
        data = {"data.source": "synthetic", "data.synthetic.num_samples": 512,
                "data.synthetic.image_size": 28, "data.synthetic.channels": 1}  # fmt: skip
    return Config().override({
        **data, "epochs": 2, "data.batch_size": batch, "model.width": width,
        "augment.preset": "simclr", "augment.blur_prob": 0.0, "augment.crop_min_scale": 0.2,
        "optim.warmup_epochs": 0.0, "eval.knn_k": [200, 20], "eval.linear_probe": True,
        "log_every": 1000,
    })  # fmt: skip


def run_timings(cfg: Config) -> dict[str, float]:
    """`fit(cfg)` of >= 2 epochs: training img/s of the last epoch, training images per second
    of the last epoch's whole wall (its val kNN included), and the final report's seconds."""
    recorder = Recorder()
    started = time.perf_counter()
    fit(cfg, recorder)
    total = time.perf_counter() - started
    last, before = recorder.epochs[-1], recorder.epochs[-2]
    images = last["train/throughput"] * last["train/epoch_time"]
    return {
        "train": last["train/throughput"],
        "epoch": images / (last["time/elapsed"] - before["time/elapsed"]),
        "final": total - last["time/elapsed"],
    }


# (3): name -> overrides of make_config's config (the first is the reference)
STEP_VARIANTS = {
    "default": {},
    "channels_last": {"memory_format": "channels_last"},
    "bf16": {"precision": "bf16"},
    "channels_last+bf16": {"memory_format": "channels_last", "precision": "bf16"},
    "compile": {"compile": True},
}
_AGAINST = """import json, sys; sys.path[:0] = [{tree!r}, {here!r}]
import bench_loop as b  # this file's timing, the raysl of the tree
cfg = b.trial_config({batch}, {width}, smoke={smoke})
print(json.dumps(b.run_timings(cfg)))"""
FIGURES = {"train": "training img/s", "epoch": "epoch img/s (val kNN included)",
           "final": "final report, s"}  # fmt: skip


def against_timings(tree: Path, batch: int, width: int, smoke: bool) -> dict[str, float]:
    """`run_timings` of the raysl checked out at `tree`, in a fresh subprocess."""
    code = _AGAINST.format(tree=str(tree), here=str(HERE), batch=batch, width=width, smoke=smoke)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def step_variants(args: argparse.Namespace, tree: Path | None) -> None:
    """(3): each variant's figures and their ratios over `default` (and REV), alternating."""
    base = trial_config(args.batch, args.width, args.smoke)
    names = [n for n in args.variants.split(",") if n != "compile" or not args.no_compile]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in [*names, *(["against"] * bool(tree))]}
    for _ in range(args.repeats):
        for name in names:
            runs[name].append(run_timings(base.override(STEP_VARIANTS[name])))
        if tree:
            runs["against"].append(against_timings(tree, args.batch, args.width, args.smoke))
    print(f"(3) the CPU step and a trial's evaluation, fit() ({torch.get_num_threads()} threads), "
          f"{base.data.source}, 2 epochs:")  # fmt: skip
    label = {"against": f"raysl {args.against}", "default": "default"}
    for key, figure in FIGURES.items():
        print(f"  {figure}:")
        for name, values in runs.items():
            digits = 2 if key == "final" else 0
            print(f"    {label.get(name, name):22s} {spread([v[key] for v in values], digits)}")
        for ref in ["default", *(["against"] if tree else [])]:
            for name in (n for n in names if n != ref):
                ratios = [a[key] / b[key] for a, b in zip(runs[name], runs[ref], strict=True)]
                if key == "final":  # seconds: the speed-up is the inverse
                    ratios = [1 / r for r in ratios]
                print(f"    speed-up {name}/{label[ref]}: median {statistics.median(ratios):.2f} "
                      f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip


def loop_overhead(cfg: Config, repeats: int) -> None:
    """(1): raysl's `fit()` against the bare loop, alternating."""
    raysl, bare, ratios = [], [], []
    for _ in range(repeats):
        raysl.append(raysl_throughput(cfg))
        bare.append(bare_throughput(cfg))
        ratios.append(raysl[-1] / bare[-1])
    print(f"(1) training step, img/s: raysl {spread(raysl)}; bare loop {spread(bare)}")
    print(f"    ratio raysl/bare: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target >= 0.97")  # fmt: skip


def worktree(rev: str, where: Path) -> Path:
    """A detached checkout of `rev` of this repository under `where`."""
    tree = where / "against"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev],
                   check=True)  # fmt: skip
    return tree


def bare_throughput(
    cfg: Config,
    device: str | torch.device = "cpu",
    autocast: bool = False,
    channels_last: bool = False,
    compile_backend: str | None = None,
    warmup: int = 0,
    timed: AbstractContextManager | None = None,
    splits: Splits | None = None,
) -> float:
    """The loop a researcher writes by hand, with the same parts; images/s of its timed steps.

    Args:
        device: where the uint8 training images, the model and the augmentation live.
        autocast: bf16 autocast for the forward pass; channels_last: model and inputs in NHWC.
        compile_backend: `torch.compile(model, backend=...)` (None: eager).
        warmup: untimed steps first (allocator, cuDNN autotuning, compilation).
        timed: a context manager entered for exactly the timed steps (e.g. a GPU sampler).
        splits: `load_splits(cfg.data)` already loaded (to time several variants on one set).
    """
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    splits = splits or load_splits(cfg.data, seed=cfg.seed)
    images = splits.train.images.to(dev)  # (N, C, S, S) uint8, on the device as fit() keeps it
    _, channels, side, _ = images.shape
    aug = Augment(cfg.augment, channels, side, splits.mean, splits.std)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = build_model(cfg.model, channels, aug.out_size, {"z"}).online.to(dev, memory_format=fmt)
    opt = torch.optim.SGD(
        param_groups([model], cfg.optim.weight_decay), lr=cfg.optim.lr, momentum=0.9
    )
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    batch, temperature = cfg.data.batch_size, cfg.loss.infonce.temperature
    steps = len(images) // batch
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator).to(dev)
    targets = ((torch.arange(2 * batch) + batch) % (2 * batch)).to(dev)  # the other view
    model.train()

    def step(i: int) -> None:
        x = images[order[i * batch : (i + 1) * batch]]
        views = aug(x, aug.sample(batch, generator))  # (2, B, C, S, S), params on the CPU
        inputs = views.flatten(0, 1).contiguous(memory_format=fmt)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            z = forward(inputs)[1]  # (h, z, p, z_sub) -> z (2B, D)
        z = F.normalize(z.float(), dim=1)
        logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # the bare loop checks too, to be fair: as often as fit() does (a device sync on a GPU)
        if ((i + 1) % cfg.log_every == 0 or i == steps - 1) and not torch.isfinite(loss):
            raise FloatingPointError("nan")

    for i in range(warmup):
        step(i % steps)
    _sync(dev)
    with timed or nullcontext():
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync(dev)
        elapsed = time.perf_counter() - start
    return steps * batch / elapsed


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def spread(values: list[float], digits: int = 0) -> str:
    f = f",.{digits}f"
    return f"median {statistics.median(values):{f}} (min {min(values):{f}}, max {max(values):{f}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--skip-loop", action="store_true", help="leave out (1)")
    parser.add_argument("--skip-augment", action="store_true", help="leave out (2)")
    parser.add_argument("--skip-step", action="store_true", help="leave out (3)")
    parser.add_argument("--no-compile", action="store_true", help="(3) without torch.compile")
    parser.add_argument(
        "--variants", default=",".join(STEP_VARIANTS), help="(3) which fit() settings to time"
    )
    parser.add_argument("--against", metavar="REV", help="(3) also against raysl at git REV")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, a few seconds (what the tests run)"
    )
    args = parser.parse_args()
    if unknown := set(args.variants.split(",")) - set(STEP_VARIANTS):
        parser.error(
            f"--variants: unknown {', '.join(sorted(unknown))}; any of {', '.join(STEP_VARIANTS)}"
        )
    if "default" not in args.variants.split(","):
        parser.error("--variants: list default (the reference of every ratio)")
    if args.smoke:
        args.steps, args.repeats, args.batch, args.width = 3, 1, 32, 8
        args.no_compile = True  # compiling takes a minute: not a smoke test's job

    cfg = make_config(args.steps, args.batch, args.width, fashion=not args.smoke)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {cfg.data.source}, "
          f"batch {args.batch}, {args.steps} steps, convnet width {args.width}")  # fmt: skip
    bare_throughput(cfg)  # warm-up: first-touch allocations, lazy imports
    if not args.skip_loop:
        loop_overhead(cfg, args.repeats)

    if not args.skip_augment:
        from bench_augment import measure

        batch, repeats = (64, 1) if args.smoke else (512, 7)
        result = measure(batch=batch, views=2, size=32, repeats=repeats)
        print(f"(2) SimCLR augmentation, 3x32x32, 2 views, batch {batch}, img/s:")
        for name in ("raysl", "torchvision", "kornia"):
            if name in result:
                print(f"    {name:12s} {spread(result[name]['runs'])}")
        for name, why in result["skipped"].items():
            print(f"    {name:12s} skipped: {why}")
        for name, value in result["ratio"].items():
            print(f"    ratio {name}: {value:.1f}x; target raysl/torchvision >= 5")

    if not args.skip_step:
        if not args.against:
            return step_variants(args, None)
        with tempfile.TemporaryDirectory(prefix="raysl-against-") as tmp:
            tree = worktree(args.against, Path(tmp))
            try:
                step_variants(args, tree)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               check=False)  # fmt: skip


if __name__ == "__main__":
    main()
