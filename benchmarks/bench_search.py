"""Does the search earn its keep? Random search, TPE, TPE + ASHA and PBT on one space, one budget.

The space (label-free): InfoNCE (weight 1) plus ICC (SimSiam-style head) and mining, each at
a searched weight, with their temperatures (InfoNCE τ, ICC τ1, mining τ) and the lr: six
loguniform keys, every weight > 0, so the same space serves PBT (a mutated weight never starts
at 0, `raysl.search.pbt`). Fashion-MNIST, a stratified 10 % of the training split
(`data.train_fraction: 0.1`, 5,400 images; the kNN bank is that subset; val: the usual 6,000),
the ConvNet of width 16, `epochs` per trial, objective `val/knn_top1` at k = 20 every epoch.

Methods, each a real `raysl tune` study (`raysl.launch.ray_tune.run_study`, local Ray, Optuna,
MLflow in SQLite), `--seeds` seeds each (`tune.seed` and the config's `seed`: Optuna's draws,
the val split, the training subset and the weight init all change with it; the methods of one
seed share the last three, so they are compared per seed):

- `random`: `tune.sampler: random` (Optuna's seeded RandomSampler), no scheduler.
- `tpe`: TPE (raysl's default; `startup_trials` = a third of the trials), no scheduler. Its
  startup trials (and any asked before a trial has finished) are random draws, as random
  search's are.
- `tpe_asha`: TPE + ASHA (grace 1 epoch, reduction factor 3). ASHA's stopped trials spend
  fewer epochs, so it gets more trials: as many as a simulation of Ray's ASHA rule says spend
  the budget with a 20 % margin (`asha_trials`); its results past the budget are cut.
- `pbt`: PBT, synchronous, interval 1, quantile 0.25, mutating lr and both weights; the
  population (trials × epochs = the budget) runs at once.

No baseline trial (`tune.baseline: false`): every trial is the method's own. Budget: the same
trial-epochs for every method (`--trials` × `--epochs`); the anytime curves count trial-epochs
in the order the driver received the results (`search_curves.py` says exactly how, and how
the final best and the budget fraction are computed). Trials run 2 at a time with 1 CPU each
(PBT: the whole population, 2 CPUs shared): trial-epochs are what is compared, wall time only
sizes the run. No study touches the test split (`eval.test: false`): what is compared is
the search, on val.

Sizing (2026-12-03, this 2-vCPU machine, quiet; `RESULTS.md`, "bench_search"):
one trial-epoch of this config (training on 5,400 images of two views + the val kNN) takes
10.1 CPU-s on 1 thread (`--cost 3`: 9.6, 10.1, 10.5 s; start-up 0.5 s); in a real study 2
trials at a time cost 5.6 s of wall per trial-epoch, and PBT's 12 trials at once on 2 cores
7.7 s (~1 GB of memory per trial, 12.8 GB at the peak). The first full run (2026-12-04,
12 trials × 4 epochs = 48 trial-epochs per study, alone) took **92 min**, 35 % more than
those per-epoch costs predict: each study's start-up, PBT's 12 processes starting at once
(~2.5 min of its ~9), and TPE + ASHA's 30 trials spending 20–48 % past the budget (cut
from the comparison, but run). Hence the default of **10 trials × 4 epochs = 40
trial-epochs**: 92 min × 40/48 ≈ 77 min predicted for 3 seeds, a margin of ~15 % for the
drift seen (later studies ran slower); measured 2026-12-06: 54.6 min (RESULTS.md). The CPU step's exact
speed-ups of 2026-12-06 ("The CPU step") leave a trial-epoch's time within its spread and are
not counted. Other jobs on the cores stretch every number.

Writes `bench_search.parquet` (every epoch result: method, seed, trial, epoch, val/knn_top1,
spent, …) and `bench_search.png` (anytime curves: mean over seeds, band = lowest to highest
seed) next to this file, and prints per method the final best (mean ± std over seeds) and the
fraction of random search's budget at which it first reaches random search's final best.

    python benchmarks/bench_search.py                   # the full run (≤ 90 min, see above)
    python benchmarks/bench_search.py --cost 3          # time 3 trial-epochs; print the sizing
    python benchmarks/bench_search.py --report          # table and PNG from the Parquet again
    python benchmarks/bench_search.py --smoke           # synthetic data, tiny (what tests run)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import search_curves  # noqa: E402
from study_runner import run_timed  # noqa: E402

from raysl.search import load_search_spec  # noqa: E402
from raysl.yamlio import unflatten  # noqa: E402

EPOCHS, TRIALS, SEEDS = 4, 10, 3  # full run: 10 × 4 = 40 trial-epochs per study (sizing above)
CONFIG = {
    "log_every": 1000,
    "data.source": "fashion_mnist",
    "data.batch_size": 256,
    "data.train_fraction": 0.1,
    "augment.preset": "simclr", "augment.blur_prob": 0.0, "augment.crop_min_scale": 0.2,
    "model.backbone": "convnet", "model.width": 16,
    "loss.infonce.weight": 1.0, "loss.infonce.temperature": 0.2,
    "loss.icc.weight": 0.3, "loss.icc.momentum": False, "loss.icc.tau1": 0.1,
    "loss.icc.tau2": 0.07, "loss.icc.ratio": 1.0,
    "loss.mining.weight": 0.3, "loss.mining.temperature": 0.2, "loss.mining.warmup_epochs": 1,
    "loss.mining.queue_size": 2048,
    "optim.name": "sgd", "optim.lr": 0.3, "optim.weight_decay": 5.0e-4,
    "optim.warmup_epochs": 1,
    "eval.knn_k": 20, "eval.test": False,
}  # fmt: skip
SMOKE = {
    "data.source": "synthetic", "data.batch_size": 64, "data.train_fraction": 1.0,
    "data.synthetic.num_samples": 256, "data.synthetic.image_size": 16,
    "data.synthetic.channels": 1, "model.width": 8, "model.proj_hidden_dim": 64,
    "model.proj_dim": 32, "model.pred_hidden_dim": 64, "loss.mining.queue_size": 128,
}  # fmt: skip
SEARCH = {
    "optim.lr": {"loguniform": [0.05, 1.0]},
    "loss.infonce.temperature": {"loguniform": [0.1, 0.5]},
    "loss.icc.weight": {"loguniform": [0.05, 1.0]},
    "loss.icc.tau1": {"loguniform": [0.05, 0.5]},
    "loss.mining.weight": {"loguniform": [0.05, 1.0]},
    "loss.mining.temperature": {"loguniform": [0.1, 0.5]},
}
MUTATE = ["optim.lr", "loss.icc.weight", "loss.mining.weight"]
METHODS = ("random", "tpe", "tpe_asha", "pbt")
ASHA = {"grace_period": 1, "reduction_factor": 3}


def asha_trials(budget: int, epochs: int, grace: int, rf: int, margin: float = 1.2) -> int:
    """The trials whose expected spend under Ray's ASHA rule is >= margin × budget: trials
    arrive one by one with a quality that keeps its rank at every rung (a uniform draw), and at
    rung r (grace·rf^k, Ray's `_Bracket`) a trial stops below the (1 − 1/rf) percentile of the
    values already recorded there. Mean over 200 simulated studies."""
    rungs = [grace * rf**k for k in range(int(math.log(epochs / grace) / math.log(rf) + 1))]
    rng = np.random.default_rng(0)
    for n in range(1, 50 * budget):
        total = 0
        for _ in range(200):
            recorded: dict[int, list[float]] = {r: [] for r in rungs}
            for q in rng.random(n):
                spent = epochs
                for r in (r for r in rungs if r < epochs):
                    seen = recorded[r]
                    stop = bool(seen) and q < np.percentile(seen, (1 - 1 / rf) * 100)
                    seen.append(q)
                    if stop:
                        spent = r
                        break
                total += spent
        if total / 200 >= margin * budget:
            return n
    raise ValueError("budget too large")


def tune_section(method: str, trials: int, epochs: int, seed: int) -> dict[str, Any]:
    """The study's `tune:` section for `method` at `seed`."""
    tune: dict[str, Any] = {
        "metric": "val/knn_top1", "mode": "max", "seed": seed, "baseline": False,
        "max_concurrent": 2, "resources": {"cpu": 1}, "scheduler": "none",
        "num_samples": trials, "startup_trials": max(1, trials // 3),
    }  # fmt: skip
    if method == "random":
        tune["sampler"] = "random"
    elif method == "tpe_asha":
        tune["scheduler"] = {"asha": ASHA}
        tune["num_samples"] = asha_trials(
            trials * epochs, epochs, ASHA["grace_period"], ASHA["reduction_factor"]
        )
        tune["startup_trials"] = max(1, tune["num_samples"] // 3)
    elif method == "pbt":
        pbt = {"interval": 1, "quantile": 0.25 if trials >= 4 else 0.5, "mutate": MUTATE}
        tune.update(scheduler={"pbt": pbt}, max_concurrent=trials)
        tune["resources"] = {"cpu": math.floor(2000 / trials) / 1000}  # all fit in 2 CPUs
    return tune


def write_space(directory: Path, method: str, seed: int, args: argparse.Namespace) -> Path:
    config = {**CONFIG, **(SMOKE if args.smoke else {}), "epochs": args.epochs, "seed": seed}
    config["loss.icc.switch_start"] = args.epochs / 2  # SimSiam loss first, then clustering
    config["loss.icc.switch_end"] = args.epochs * 0.75
    doc = {
        "name": f"bench_search_{method}_s{seed}",
        "config": unflatten(config),
        "search": SEARCH,
        "tune": tune_section(method, args.trials, args.epochs, seed),
    }
    path = directory / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_one(directory: Path, method: str, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    """Run one study; its epoch results read back from MLflow (one row each)."""
    spec = load_search_spec(write_space(directory, method, seed, args))
    _out, parent, client, wall = run_timed(spec, directory)
    experiment = client.get_experiment_by_name(spec.name)
    winner_test = client.get_run(parent).data.metrics.get("test/knn_top1", math.nan)
    query = f"tags.`raysl.kind` = 'trial' and tags.`mlflow.parentRunId` = '{parent}'"
    rows, repeats = [], 0
    for run in client.search_runs([experiment.experiment_id], query, max_results=5000):
        tags, searched = run.data.tags, {k: run.data.params.get(k) for k in SEARCH}
        seen: set[int] = set()
        for m in sorted(client.get_metric_history(run.info.run_id, search_curves.METRIC),
                        key=lambda m: (m.timestamp, m.step)):  # fmt: skip
            if m.step in seen:  # a value logged again at a step it has: not a new epoch
                repeats += 1
                continue
            seen.add(m.step)
            rows.append({
                "method": method, "seed": seed, "trial": int(tags.get("raysl.optuna_trial", -1)),
                "epoch": int(m.step), search_curves.METRIC: float(m.value),
                "timestamp": int(m.timestamp), "budget": args.trials * args.epochs,
                "status": tags.get("raysl.status", ""), "trial_id": tags.get("raysl.trial_id", ""),
                "params": json.dumps(searched), "study_wall_s": wall, "winner_test": winner_test,
            })  # fmt: skip
    again = (
        f" ({repeats} results at an epoch their trial had logged, not counted)" if repeats else ""
    )
    print(f"  {spec.name}: {spec.tune.num_samples} trials, {len(rows)} trial-epochs{again}, "
          f"{wall:.0f} s", flush=True)  # fmt: skip
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, png: Path) -> None:
    table = search_curves.with_spent(table)
    title = f"InfoNCE + ICC + mining, {table['epoch'].max()}-epoch trials, {table['budget'].max()}"
    title += f" trial-epochs, {table['seed'].nunique()} seeds"
    search_curves.plot(table, png, title)
    print(f"\nanytime curves: {png}")
    print("\n".join(search_curves.table_lines(search_curves.summarise(table))))


def cost(epochs: int) -> None:
    """Time `epochs` trial-epochs of the full run's config, in this process with 1 thread (what
    a 1-CPU trial gets): wall and CPU seconds per epoch, and the full run it implies."""
    import torch

    from raysl.config import Config
    from raysl.reporting import Reporter
    from raysl.train import fit

    class Clock(Reporter):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = [(time.perf_counter(), time.process_time())]

        def start(self, info: Any) -> None:
            self.marks.append((time.perf_counter(), time.process_time()))

        def epoch(self, metrics: Any, checkpoint: Any) -> None:
            self.marks.append((time.perf_counter(), time.process_time()))
            print(f"  epoch {int(metrics['epoch'])}: val/knn_top1 {metrics['val/knn_top1']:.2f}")

    torch.set_num_threads(1)
    clock = Clock()
    config = {**CONFIG, "epochs": epochs, "loss.icc.switch_start": epochs / 2}
    config["loss.icc.switch_end"] = epochs * 0.75
    fit(Config.from_flat(config), clock)
    (w0, c0), (w1, c1), *rest = clock.marks
    walls = [b[0] - a[0] for a, b in zip([(w1, c1), *rest], rest, strict=False)]
    cpus = [b[1] - a[1] for a, b in zip([(w1, c1), *rest], rest, strict=False)]
    per = float(np.median(cpus))
    total = sum(TRIALS * EPOCHS * (1.2 if m == "tpe_asha" else 1.0) for m in METHODS) * SEEDS
    print(f"start-up (data, model): {w1 - w0:.1f} s wall, {c1 - c0:.1f} s CPU")
    print(f"per trial-epoch (1 thread): wall {', '.join(f'{w:.1f}' for w in walls)} s; "
          f"CPU {', '.join(f'{c:.1f}' for c in cpus)} s")  # fmt: skip
    print(f"full run: {total:.0f} trial-epochs; 2 at a time on 2 cores ≈ {total * per / 2 / 60:.0f}"
          f" min of training alone at {per:.1f} CPU-s each: a lower bound (add ~15 s per study,"
          f" trial starts and PBT's 12 at once: the module docstring's sizing)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # fmt: off
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--trials", type=int, default=TRIALS, help="per study of random/tpe/pbt")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=HERE / "bench_search", help="PREFIX of .parquet/.png")
    parser.add_argument("--work", type=Path, help="keep the studies here (default: a temp dir)")
    parser.add_argument("--report", action="store_true", help="the table and PNG from the Parquet")
    parser.add_argument("--cost", type=int, metavar="EPOCHS", help="time EPOCHS trial-epochs")
    parser.add_argument("--smoke", action="store_true", help="synthetic, 1 seed, 2 trials × 2 epochs")
    # fmt: on
    args = parser.parse_args()
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"--methods: unknown {', '.join(unknown)}; any of {', '.join(METHODS)}")
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work}: give a new or empty directory (studies start afresh)")
    if args.cost:
        return cost(args.cost)
    parquet = args.out.with_suffix(".parquet")
    if args.report:
        return report(pd.read_parquet(parquet), args.out.with_suffix(".png"))
    if args.smoke:
        args.trials, args.epochs, args.seeds = 2, 2, 1
    with tempfile.TemporaryDirectory(prefix="raysl-bench-search-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            parquet, args.out = work / "bench_search.parquet", work / "bench_search"
        from raysl.launch.session import ray_session

        tables = []
        with ray_session(log_file=work / "ray.log"):  # one local cluster for every study
            for seed in range(args.seeds):
                for method in methods:
                    tables.append(run_one(work, method, seed, args))
                    table = search_curves.with_spent(pd.concat(tables, ignore_index=True))
                    table.to_parquet(parquet, index=False)  # kept if a later study fails
        print(f"\n{len(table)} epoch results: {parquet}")
        report(table, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
