"""Fashion-MNIST: does `raysl train` beat raw pixels, and how long does it take? One run,
three rows scored the same way: the test split's weighted cosine kNN (bank = train + val,
T = 0.1) at every k of the run file's `eval.knn_k` and, when it sets `eval.linear_probe`,
the same linear probe (trained on train + val, scored on test):

(a) raw pixels (`raw_pixels.py`; the anchors of ../shared/measured.md: 78.85 % at k = 200,
    84.47 % at k = 20, 83.49 % with the probe);
(b) the features of the *untrained* network (what a random ConvNet gives);
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
from raw_pixels import raw_pixels

from raysl.augment import Augment
from raysl.console import ConsoleReporter
from raysl.data import load_splits
from raysl.evaluate import Evaluator
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
    e = cfg.eval.model_copy(update={"test": True})
    splits = load_splits(cfg.data, seed=cfg.seed)
    assert splits.test is not None
    columns = [f"test/knn_top1_k{k}" for k in e.ks] + ["test/linear_top1"] * e.linear_probe
    names = [f"kNN k={k}" for k in e.ks] + ["linear probe"] * e.linear_probe
    print(f"test split, bank = train + val, T = {e.knn_temperature}: " + " | ".join(names))

    def row(label: str, metrics: dict[str, float]) -> None:
        print(f"{label:>28s}: " + " | ".join(f"{metrics[c]:6.2f} %" for c in columns))

    probe = e.probe_epochs if e.linear_probe else None
    raw = raw_pixels(splits, e.ks, e.knn_temperature, probe, e.probe_lr)
    row("(a) raw pixels", raw)

    torch.manual_seed(cfg.seed)
    _, channels, side, _ = splits.train.images.shape
    augment = Augment(cfg.augment, channels, side, splits.mean, splits.std)
    requires = build_criterion(cfg.active_terms(), dim=cfg.model.proj_dim).requires
    backbone = build_model(cfg.model, channels, augment.out_size, requires).backbone
    evaluator = Evaluator(e, splits, augment.plain, torch.device("cpu"), False, cfg.seed)
    row(
        f"(b) untrained {cfg.model.backbone} w{cfg.model.width}",
        _by_k(evaluator.final(backbone), e.ks),
    )

    start = time.perf_counter()
    summary = fit(cfg.override({"eval.test": True}), ConsoleReporter(live=False),
                  name=Path(args.run_file).stem)  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    trained = _by_k(summary, e.ks)
    row(f"(c) raysl train, {cfg.epochs} epochs", trained)
    print(f"    {minutes:.1f} min on {torch.get_num_threads()} threads")
    print("    margin over raw pixels: " + ", ".join(
        f"{n} {trained[c] - raw[c]:+.2f}" for n, c in zip(names, columns, strict=True)
    ) + " points")  # fmt: skip


def _by_k(metrics: dict[str, float], ks: tuple[int, ...]) -> dict[str, float]:
    """The run's metrics with the first k named by its value too (a single k is logged as
    `test/knn_top1` alone)."""
    return {f"test/knn_top1_k{ks[0]}": metrics["test/knn_top1"], **metrics}


if __name__ == "__main__":
    main()
