"""What a study costs on top of its training: per-trial overhead of `raysl tune`, in one run.

(1) Single-worker trials (`tune.resources.workers: 1`, `fit()` inside the Tune trial), one at
    a time. Per trial: overhead = the trial's wall time as the driver sees it (its MLflow child
    run, opened when Tune starts the trial and closed when it completes) minus the time spent
    inside `fit()` (the trial's last `time/elapsed` metric: data, model, epochs, evaluation,
    checkpoints). Target: <= 3 s per trial on this machine.
(2) TorchTrainer trials (`workers: 2`, one CPU each): the same, with `time/elapsed` of rank 0.
(3) Concurrency 2 (single-worker trials, one CPU each): the study's wall time against the sum
    of its trials' time inside `fit()` (1.0 = no overlap; 0.5 = perfect overlap; on 2 cores the
    trials also share the cores, so each trial's fit is slower than alone).
(4) PBT (`tune.scheduler.pbt`, asynchronous, interval 1, every trial running at once): the
    cost of an exploit. Per trial, the driver's time between two consecutive epoch results
    (MLflow metric timestamps) is a plain epoch, or, where the trial's lineage says it
    continued from another trial's checkpoint, an exploit: pause, checkpoint copy, trial
    restart, restore, and one epoch. Overhead = exploit gap - median plain gap.

Every study is a real `raysl tune` study (local Ray, Optuna, MLflow SQLite store in a temp
directory) on the synthetic source with a small ConvNet, so the fit part is a few seconds.

    python benchmarks/bench_tune.py [--trials 4] [--epochs 3] [--skip-train]
    python benchmarks/bench_tune.py --smoke    # (1) and (4), tiny (~60 s)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysl.search import load_search_spec
from raysl.yamlio import unflatten

CONFIG = {
    "log_every": 4,
    "data.source": "synthetic",
    "data.batch_size": 64,
    "data.synthetic.num_samples": 512,
    "data.synthetic.image_size": 16,
    "data.synthetic.channels": 3,
    "model.width": 8,
    "model.proj_hidden_dim": 64,
    "model.proj_dim": 32,
    "eval.knn_k": 20,
    "eval.test": False,
    "optim.lr": 0.1,
}


def write_space(
    directory: Path,
    name: str,
    trials: int,
    epochs: int,
    config: dict[str, Any] | None = None,
    **tune: Any,
) -> Path:
    """A search-space file of `trials` trials over lr and temperature; `config` overrides CONFIG."""
    doc = {
        "name": name,
        "config": unflatten({**CONFIG, **(config or {}), "epochs": epochs}),
        "search": {
            "optim.lr": {"loguniform": [0.01, 1.0]},
            "loss.infonce.temperature": {"loguniform": [0.05, 0.5]},
        },
        "tune": {"metric": "val/knn_top1", "mode": "max", "num_samples": trials, "seed": 0,
                 "scheduler": "none", **tune},
    }  # fmt: skip
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(directory: Path, space: Path) -> tuple[float, list[dict[str, float]], float, float]:
    """Run the study; returns its wall time, per trial the wall time and time inside fit, and
    the fixed costs: seconds before the first trial starts (Ray, MLflow, Optuna set-up) and
    after the last one ends (leaderboard, Optuna plots, artifacts, Ray shutdown)."""
    from mlflow.tracking import MlflowClient

    from raysl.launch.ray_tune import run_study

    spec = load_search_spec(space)
    uri = f"sqlite:///{directory}/mlflow.db"
    out = directory / "runs" / spec.name
    started, started_unix = time.perf_counter(), time.time()
    run_study(spec, out, str(directory / "runs"), uri, live=False)
    wall = time.perf_counter() - started
    ended_unix = time.time()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name)
    trials = []
    for child in client.search_runs(
        [experiment.experiment_id], "tags.`raysl.kind` = 'trial'", max_results=1000
    ):
        history = client.get_metric_history(child.info.run_id, "time/elapsed")
        inside = max(history, key=lambda m: m.step).value
        trial_wall = (child.info.end_time - child.info.start_time) / 1000
        trials.append({"wall": trial_wall, "fit": inside, "overhead": trial_wall - inside,
                       "start": child.info.start_time / 1000, "end": child.info.end_time / 1000})  # fmt: skip
    before = min(t["start"] for t in trials) - started_unix
    after = ended_unix - max(t["end"] for t in trials)
    return wall, trials, before, after


def pbt_gaps(directory: Path, name: str) -> tuple[list[float], list[float]]:
    """(plain epoch gaps, exploit gaps) in seconds, over the trials of PBT study `name`: the
    time between two consecutive results of a trial, an exploit where `pbt/exploits` rose."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{directory}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    plain, exploit = [], []
    for child in client.search_runs([experiment.experiment_id], "tags.`raysl.kind` = 'trial'"):
        history = client.get_metric_history(child.info.run_id, "pbt/exploits")
        history.sort(key=lambda m: m.timestamp)
        for before, after in itertools.pairwise(history):
            gap = (after.timestamp - before.timestamp) / 1000
            (exploit if after.value > before.value else plain).append(gap)
    return plain, exploit


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="skip the TorchTrainer part")
    parser.add_argument(
        "--smoke", action="store_true", help="only (1), 2 trials of 1 epoch (what the tests run)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.epochs, args.skip_train = 2, 1, True
    cases = [
        ("(1) single-worker trials, 1 at a time", "bench_fit", args.trials,
         {"max_concurrent": 1, "resources": {"cpu": 2}}),
        ("(2) TorchTrainer trials (2 workers), 1 at a time", "bench_train", max(2, args.trials // 2),
         {"max_concurrent": 1, "resources": {"cpu": 1, "workers": 2}}),
        ("(3) single-worker trials, 2 at a time", "bench_parallel", args.trials,
         {"max_concurrent": 2, "resources": {"cpu": 1}}),
    ]  # fmt: skip
    if args.skip_train:
        cases.pop(1)
    pbt = {
        "pbt": {
            "interval": 1,
            "quantile": 0.25,
            "synch": False,
            "mutate": ["optim.lr", "loss.infonce.temperature"],
        }
    }
    cases.append(
        (
            "(4) PBT, 4 trials at once, interval 1",
            "bench_pbt",
            4,
            {"scheduler": pbt, "max_concurrent": 4, "resources": {"cpu": 0.5}},
        )
    )
    if args.smoke:
        cases = [cases[0], cases[-1]]
    lines = []
    for title, name, trials, tune in cases:
        with tempfile.TemporaryDirectory(prefix="raysl-bench-tune-") as tmp:
            directory = Path(tmp)
            epochs = max(3, args.epochs) if name == "bench_pbt" else args.epochs  # exploits
            space = write_space(directory, name, trials, epochs, **tune)
            wall, rows, before, after = run(directory, space)
            gaps = pbt_gaps(directory, name) if name == "bench_pbt" else None
        fit_sum = sum(r["fit"] for r in rows)
        lines.append(
            f"{title}: {len(rows)} trials, study wall {wall:.1f} s\n"
            f"    per trial: wall {spread([r['wall'] for r in rows])}, inside fit() "
            f"{spread([r['fit'] for r in rows])}, overhead {spread([r['overhead'] for r in rows])}\n"
            f"    study wall / sum of fit time = {wall:.1f} / {fit_sum:.1f} = {wall / fit_sum:.2f} "
            f"(includes the fixed costs)\n"
            f"    fixed: {before:.1f} s before the first trial (Ray start, MLflow, Optuna), "
            f"{after:.1f} s after the last (plots, artifacts, Ray shutdown)"
        )
        if gaps is not None:
            plain, exploit = gaps
            if exploit and plain:
                base = statistics.median(plain)
                lines[-1] += (
                    f"\n    PBT: {len(exploit)} exploits; plain epoch gap {spread(plain)}, "
                    f"exploit gap {spread(exploit)}: exploit / plain = "
                    f"{statistics.median(exploit) / base:.2f}, overhead "
                    f"{statistics.median(exploit) - base:.2f} s per exploit"
                )
            else:
                lines[-1] += f"\n    PBT: {len(exploit)} exploits, {len(plain)} plain epochs"
            lines[-1] += (
                "\n    (a PBT trial's 'inside fit()' is its last segment's: fit restarts at each "
                "exploit, so its 'overhead' above counts the earlier segments)"
            )
        print(lines[-1], flush=True)
    print("\nsummary")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
