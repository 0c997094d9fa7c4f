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

    python benchmarks/bench_loop.py [--steps 30] [--repeats 5] [--batch 256] [--width 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raysl.augment import Augment
from raysl.config import Config
from raysl.data import load_splits
from raysl.models import build_model
from raysl.optim import param_groups
from raysl.reporting import Recorder
from raysl.train import fit

FASHION = Path("/usr/share/datasets/fashion-mnist")


def make_config(steps: int, batch: int, width: int) -> Config:
    data = {"data.source": "fashion_mnist"} if FASHION.is_dir() else {
        "data.source": "synthetic", "data.synthetic.num_samples": 4 * steps * batch,
        "data.synthetic.image_size": 28, "data.synthetic.channels": 1,
    }  # fmt: skip
    return Config().override({
        **data, "epochs": 1, "data.batch_size": batch, "data.train_limit": steps * batch,
        "model.width": width, "augment.preset": "simclr", "optim.warmup_epochs": 0.0,
        "eval.test": False, "eval.bank_limit": batch, "log_every": 20,
    })  # fmt: skip


def raysl_throughput(cfg: Config) -> float:
    recorder = Recorder()
    fit(cfg, recorder)
    return recorder.epochs[-1]["train/throughput"]


def bare_throughput(cfg: Config) -> float:
    """The loop a researcher writes by hand, with the same parts."""
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.data, seed=cfg.seed)
    images = splits.train.images
    _, channels, side, _ = images.shape
    aug = Augment(cfg.augment, channels, side, splits.mean, splits.std)
    model = build_model(cfg.model, channels, aug.out_size, {"z"}).online
    opt = torch.optim.SGD(
        param_groups([model], cfg.optim.weight_decay), lr=cfg.optim.lr, momentum=0.9
    )
    batch, temperature = cfg.data.batch_size, cfg.loss.infonce.temperature
    steps = len(images) // batch
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    targets = (torch.arange(2 * batch) + batch) % (2 * batch)  # the other view of each image
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x = images[order[step * batch : (step + 1) * batch]]
        views = aug(x, aug.sample(batch, generator))  # (2, B, C, S, S)
        _, z, _ = model(views.flatten(0, 1))
        z = F.normalize(z, dim=1)
        logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss):  # the bare loop checks too, to be fair
            raise FloatingPointError("nan")
    return steps * batch / (time.perf_counter() - start)


def spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--skip-augment", action="store_true")
    args = parser.parse_args()

    cfg = make_config(args.steps, args.batch, args.width)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {cfg.data.source}, "
          f"batch {args.batch}, {args.steps} steps, convnet width {args.width}")  # fmt: skip
    bare_throughput(cfg)  # warm-up: first-touch allocations, lazy imports
    raysl, bare, ratios = [], [], []
    for _ in range(args.repeats):
        raysl.append(raysl_throughput(cfg))
        bare.append(bare_throughput(cfg))
        ratios.append(raysl[-1] / bare[-1])
    print(f"(1) training step, img/s: raysl {spread(raysl)}; bare loop {spread(bare)}")
    print(f"    ratio raysl/bare: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target >= 0.97")  # fmt: skip

    if not args.skip_augment:
        from bench_augment import measure

        result = measure(batch=512, views=2, size=32, repeats=7)
        print("(2) SimCLR augmentation, 3x32x32, 2 views, batch 512, img/s:")
        for name in ("raysl", "torchvision", "kornia"):
            if name in result:
                print(f"    {name:12s} {spread(result[name]['runs'])}")
        for name, value in result["ratio"].items():
            print(f"    ratio {name}: {value:.1f}x; target raysl/torchvision >= 5")


if __name__ == "__main__":
    main()
