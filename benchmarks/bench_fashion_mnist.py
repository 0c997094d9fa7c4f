"""Fashion-MNIST: does `raysl train` beat raw pixels, and how long does it take? One run:

(a) raw-pixel weighted cosine kNN on the test split (bank = all 60,000 training images,
    k=200, T=0.1): the anchor of ../shared/measured.md, 78.85 %;
(b) the same kNN on the features of the *untrained* network (what a random ConvNet gives);
(c) `raysl train` with the given run file (default search_spaces/simclr_fashion_mnist.yaml),
    timed end to end (data loading, training, every-epoch kNN, final evaluation).

Needs Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist).

    python benchmarks/bench_fashion_mnist.py [RUN_FILE] [--set KEY=VALUE ...]
    python benchmarks/bench_fashion_mnist.py --smoke   # synthetic stand-in, a few seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raysl.augment import Augment
from raysl.console import ConsoleReporter
from raysl.data import load_splits
from raysl.evaluate import extract_features, knn_top1
from raysl.losses import build_criterion
from raysl.models import build_model
from raysl.runfile import load_run_file, parse_overrides
from raysl.train import fit

REPO = Path(__file__).resolve().parents[1]
SMOKE = [  # the same script end to end on tiny synthetic data (no dataset needed)
    "data.source=synthetic", "data.synthetic.num_samples=512", "data.synthetic.image_size=28",
    "data.synthetic.channels=1", "epochs=1", "model.width=8", "data.batch_size=128",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_file", nargs="?", default=str(REPO / "search_spaces" / "simclr_fashion_mnist.yaml")
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 epoch on 512 synthetic 1x28x28 images, a few seconds (what the tests run)",
    )
    args = parser.parse_args()
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    cfg = load_run_file(args.run_file, parse_overrides(overrides)).config
    e = cfg.eval
    k = e.ks[0]  # the k that test/knn_top1 reports (eval.knn_k may list several)
    splits = load_splits(cfg.data, seed=cfg.seed)
    assert splits.test is not None
    bank_images = torch.cat([splits.train.images, splits.val.images])
    bank_labels = torch.cat([splits.train.labels, splits.val.labels])

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.flatten(1).float(), dim=1)

    raw = knn_top1(
        pixels(bank_images),
        bank_labels,
        pixels(splits.test.images),
        splits.test.labels,
        10,
        k,
        e.knn_temperature,
    )
    print(f"(a) raw pixels, test kNN top-1 (k={k}, T={e.knn_temperature}): {raw:.2f} %")

    torch.manual_seed(cfg.seed)
    _, channels, side, _ = splits.train.images.shape
    augment = Augment(cfg.augment, channels, side, splits.mean, splits.std)
    requires = build_criterion(cfg.active_terms(), dim=cfg.model.proj_dim).requires
    backbone = build_model(cfg.model, channels, augment.out_size, requires).backbone
    cpu = torch.device("cpu")

    def features(images: torch.Tensor) -> torch.Tensor:
        return extract_features(backbone, images, augment.plain, e.batch_size, cpu)

    untrained = knn_top1(
        features(bank_images),
        bank_labels,
        features(splits.test.images),
        splits.test.labels,
        10,
        k,
        e.knn_temperature,
    )
    print(
        f"(b) untrained {cfg.model.backbone} (width {cfg.model.width}), test kNN top-1: {untrained:.2f} %"
    )

    start = time.perf_counter()
    summary = fit(cfg, ConsoleReporter(live=False), name=Path(args.run_file).stem)
    minutes = (time.perf_counter() - start) / 60
    trained = summary["test/knn_top1"]
    print(
        f"(c) raysl train, test kNN top-1: {trained:.2f} % in {minutes:.1f} min on {torch.get_num_threads()} threads"
    )
    print(
        f"    margin over raw pixels: {trained - raw:+.2f} points; over the untrained network: {trained - untrained:+.2f}"
    )


if __name__ == "__main__":
    main()
