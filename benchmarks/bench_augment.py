"""Throughput of the SimCLR augmentation: raysl `Augment` vs torchvision v2 vs kornia.

One run measures, on the same random 3x32x32 uint8 batch (CIFAR-sized), 2 views per image:

(a) raysl: `Augment` with the `simclr` preset, parameters sampled per call (included);
(b) torchvision v2, image by image (the usual `Dataset.__getitem__` pipeline, one process):
    RandomResizedCrop(32, (0.08, 1)), HFlip, RandomApply(ColorJitter(.8, .8, .8, .2), p=.8),
    RandomGrayscale(.2), RandomApply(GaussianBlur(3, (0.1, 2)), p=.5), ToDtype, Normalize;
(c) kornia.augmentation, the same pipeline batched, on the 2B views in one call.

Throughput is in input images per second (each image yields 2 views). Usage:

    python benchmarks/bench_augment.py [--batch 512] [--repeats 7] [--threads N] [--device cpu]
    python benchmarks/bench_augment.py --smoke    # tiny, a few seconds; kornia skipped if absent

Other scripts: `sys.path.insert(0, "benchmarks")`, then `from bench_augment import measure`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10


def _raysl(views: int, size: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from raysl.augment import Augment
    from raysl.config import AugmentConfig

    aug = Augment(AugmentConfig(preset="simclr", views=views), 3, size, MEAN, STD)
    gen = torch.Generator().manual_seed(0)
    return lambda images: aug(images, aug.sample(len(images), gen))


def _torchvision(
    views: int, size: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    t = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0)),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    return lambda images: torch.stack(
        [torch.stack([t(img) for _ in range(views)]) for img in images], dim=1
    )


def _kornia(views: int, size: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    import kornia.augmentation as K

    t = K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=0.5),
        K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
    ).to(device)

    def run(images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div_(255).repeat(views, 1, 1, 1)  # (V*B, C, H, W)
        return t(x).view(views, *images.shape[:1], *x.shape[1:])

    return run


IMPLS = {"raysl": _raysl, "torchvision": _torchvision, "kornia": _kornia}


def measure(
    batch: int = 512,
    views: int = 2,
    size: int = 32,
    repeats: int = 7,
    warmup: int = 2,
    device: str = "cpu",
    threads: int | None = None,
    impls: tuple[str, ...] = ("raysl", "torchvision", "kornia"),
) -> dict[str, Any]:
    """Images/s of each implementation: {name: {"median", "min", "max", "runs"}} plus
    {"ratio": {"raysl/torchvision", "raysl/kornia"}} where both were measured and
    {"skipped": {name: why}} for those whose package is not installed (kornia is in the
    `bench` extra). torchvision runs fewer repeats (it is ~20x slower): max(3, repeats // 2),
    warm-up 1 (with repeats=1: 1 run, no warm-up)."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    images = torch.randint(
        0,
        256,
        (batch, 3, size, size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    images = images.to(dev)
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in impls:
        try:
            fn = IMPLS[name](views, size, dev)
        except ImportError as exc:
            skipped[name] = f"{exc} (pip install -e '.[bench]')"
            continue
        n_rep, n_warm = (max(3, repeats // 2), 1) if name == "torchvision" else (repeats, warmup)
        if repeats == 1:
            n_rep, n_warm = 1, 0
        runs = []
        for i in range(n_warm + n_rep):
            _sync(dev)
            t0 = time.perf_counter()
            y = fn(images)
            _sync(dev)
            if i >= n_warm:
                runs.append(batch / (time.perf_counter() - t0))
        assert y.shape == (views, batch, 3, size, size), (name, y.shape)
        out[name] = {
            "median": statistics.median(runs),
            "min": min(runs),
            "max": max(runs),
            "runs": runs,
        }
    ratio = {
        f"raysl/{k}": out["raysl"]["median"] / out[k]["median"]
        for k in out
        if k != "raysl" and "raysl" in out
    }
    return {**out, "ratio": ratio, "skipped": skipped}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (the tests)")
    a = p.parse_args()
    if a.smoke:
        a.batch, a.repeats = 32, 1
    res = measure(a.batch, a.views, repeats=a.repeats, device=a.device, threads=a.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"SimCLR augmentation, {a.views} views of {a.batch} x 3x32x32 uint8, {a.device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, load avg {load:.2f}"
    )
    for name in IMPLS:
        if name in res["skipped"]:
            print(f"  {name:12s} skipped: {res['skipped'][name]}")
            continue
        r = res[name]
        spread = f"min {r['min']:9,.0f}  max {r['max']:9,.0f}"
        print(f"  {name:12s} median {r['median']:9,.0f} img/s  ({spread}, {len(r['runs'])} runs)")
    for k, v in res["ratio"].items():
        print(f"  {k:24s} {v:6.1f}x")


if __name__ == "__main__":
    main()
