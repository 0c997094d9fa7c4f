"""Do raysl's studies find anything? Each study run for real, its best trial retrained, measured.

For each study file (default: search_spaces/mix_fashion_mnist.yaml, label-free, and
search_spaces/mining_thresholds_fashion_mnist.yaml, a seed method):

(1) the study runs to completion (`raysl.launch.ray_tune.run_study`: local Ray, Optuna,
    MLflow in SQLite; its baseline trial and finalists as the file says), timed;
(2) its baseline (the file's base config: trial 0) and its best tuned trial (the study's
    winner, ranked by the finalists' mean when the file has finalists; when the baseline
    wins, the best trial that is not the baseline, and the table says so) are retrained on
    the **full** training split (`data.train_fraction: 1`) with `--seeds` seeds each, `--jobs`
    runs at a time on `--threads` threads each, at the study's epoch count (or `--epochs`),
    every other key as the study trained it (val kNN only at the end);
(3) each retrained encoder: test kNN at k = 200 and k = 20 (bank = train + val, weighted
    cosine, T = 0.1) and the linear probe (raysl's: full-batch Adam on standardised frozen
    features, 100 epochs, trained on train + val, scored on test); raw pixels beside them with
    the same kNN and the same probe;
(4) Optuna's parameter importances (fANOVA, seed 0) over the study's completed trials.

Prints one Markdown table per study (mean ± std over seeds; std is the sample std, n - 1),
the tuned trial's searched values and the importances, and writes it all to
`bench_studies.json` (`--out`). Nothing is chosen on the test split: the study ranks on val.

    python benchmarks/bench_studies.py                          # both studies (see RESULTS.md)
    python benchmarks/bench_studies.py search_spaces/X.yaml --seeds 3 --jobs 2
    python benchmarks/bench_studies.py --report                 # the tables from the JSON
    python benchmarks/bench_studies.py --smoke                  # digits, tiny (the tests)
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from study_runner import run_timed, store_uri  # noqa: E402

from raysl.runfile import parse_overrides  # noqa: E402
from raysl.search import load_search_spec  # noqa: E402

STUDIES = [
    "search_spaces/mix_fashion_mnist.yaml",
    "search_spaces/mining_thresholds_fashion_mnist.yaml",
]
FINAL = {"data.train_fraction": 1.0, "eval.knn_k": [200, 20], "eval.linear_probe": True,
         "eval.test": True}  # fmt: skip
SMOKE = ["data.source=digits", "model.width=8", "data.batch_size=128", "epochs=2",
         "tune.num_samples=2", "tune.max_concurrent=2", "tune.startup_trials=1",
         "tune.finalists.top=1", "tune.finalists.seeds=1"]  # fmt: skip
METRICS = {"test/knn_top1_k200": "test kNN k=200", "test/knn_top1_k20": "test kNN k=20",
           "test/linear_top1": "linear probe"}  # fmt: skip
FINALIST = ("mean_over_seeds", "std_over_seeds", "seeds")  # raysl.tracking.ranking's columns
_FIT = """import json, sys, torch
from raysl.config import Config
from raysl.reporting import Recorder
from raysl.train import fit
torch.set_num_threads({threads})
summary = fit(Config.from_flat(json.loads(sys.argv[1])), Recorder())
print("SUMMARY " + json.dumps(summary))"""


def run_one_study(path: Path, work: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the study of `path` under `work` (or read it back when `work` holds it finished
    already); its base and tuned flat configs, the leaderboard's rows, importances, wall time."""
    spec = load_search_spec(path, parse_overrides(overrides))
    out = work / "runs" / spec.name
    if (out / "leaderboard.json").is_file():  # finished before: read it back, do not re-run
        from mlflow.tracking import MlflowClient

        parent = json.loads((out / "study.json").read_text())["parent_run_id"]
        client = MlflowClient(store_uri(work))
        info = client.get_run(parent).info
        if info.status != "FINISHED":
            raise SystemExit(f"{out}: the study did not finish (MLflow parent {info.status}); "
                             "resume it with `raysl tune --resume` or give a new --work")  # fmt: skip
        wall = (info.end_time - info.start_time) / 1000
    else:
        out, parent, client, wall = run_timed(spec, work)
    board = json.loads((out / "leaderboard.json").read_text())
    searched = [p.key for p in spec.params]
    base = spec.base.to_flat()
    # the best trial that is not the base config: the study's winner unless the baseline won
    tuned = next((r for r in board if not r.get("baseline")), board[0])
    kept = ("rank", "number", "status", "epochs", "baseline", "best", *FINALIST)

    def shown(row: dict[str, Any]) -> dict[str, Any]:  # searched values, metrics, ranking
        return {k: v for k, v in row.items() if k in searched or "/" in k or k in kept}

    return {
        "study": spec.name, "file": str(path), "wall_s": wall, "metric": spec.tune.metric,
        "trials": len(board), "base": base, "baseline_won": bool(board[0].get("baseline")),
        # a trial's config is the base with its sampled values (inactive `when` keys: base's)
        "tuned": {**base, **{k: tuned[k] for k in searched if tuned.get(k) is not None}},
        "tuned_row": shown(tuned), "winner_row": shown(board[0]),
        # the keys the tuned trial searched: a `when` that fails leaves its key at the base value
        "tuned_searched": spec.searched_in(tuned),
        "importances": importances(out),
        "parent_metrics": client.get_run(parent).data.metrics,
    }  # fmt: skip


def importances(out: Path) -> dict[str, float]:
    """fANOVA importances of the study's Optuna journal (its completed trials)."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from raysl.launch.optuna_search import load_optuna_study

    study = load_optuna_study(out, json.loads((out / "study.json").read_text())["optuna_study"])
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as err:  # too few trials, or one value only
        return {"(not computed)": str(err)}  # type: ignore[dict-item]
    return {k: round(float(v), 3) for k, v in found.items()}


def retrain(flat: dict[str, Any], threads: int) -> dict[str, float]:
    """`fit()` of `flat` in a fresh process (its own thread count); the run's summary."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    code = _FIT.format(threads=threads)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"retraining failed:\n{done.stderr[-2000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("SUMMARY "))
    return {**json.loads(line.removeprefix("SUMMARY ")), "wall_s": time.perf_counter() - started}


def retrain_all(study: dict[str, Any], args: argparse.Namespace) -> None:
    """Baseline and the best tuned trial on the full training split, `args.seeds` seeds each
    (in place)."""
    flats, overrides = {}, parse_overrides(args.set)
    for which in ("baseline", "tuned"):
        flat = {**(study["base"] if which == "baseline" else study["tuned"]), **FINAL, **overrides}
        if args.epochs:
            flat["epochs"] = args.epochs
        flat["eval.every"] = flat["epochs"]  # val kNN at the end only: nothing is chosen here
        flats[which] = flat
    # seed by seed, both configs: a run cut short still holds pairs
    jobs = [(w, seed, {**flats[w], "seed": seed}) for seed in range(args.seeds) for w in flats]
    started = time.perf_counter()

    def one(job: tuple[str, int, dict[str, Any]]) -> dict[str, float]:
        summary = retrain(job[2], args.threads)
        shown = ", ".join(f"{METRICS[k]} {summary[k]:.2f}" for k in METRICS if k in summary)
        print(f"  {study['study']}: {job[0]} seed {job[1]}: {shown}", flush=True)
        return summary

    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(one, jobs))
    study["retrain_wall_s"] = time.perf_counter() - started
    study["retrain_epochs"] = jobs[0][2]["epochs"]
    study["retrained"] = [
        {"which": which, "seed": seed, **{k: s.get(k) for k in [*METRICS, "wall_s"]}}
        for (which, seed, _), s in zip(jobs, summaries, strict=True)
    ]


def raw_pixels(source_flat: dict[str, Any]) -> dict[str, float]:
    """Raw pixels, the same final protocol: kNN k = 200 and 20 and the linear probe."""
    from raw_pixels import raw_pixels as score

    from raysl.config import Config
    from raysl.data import load_splits

    cfg = Config.from_flat({**source_flat, **FINAL})
    e = cfg.eval
    splits = load_splits(cfg.data, seed=cfg.seed)
    return score(splits, e.ks, e.knn_temperature, e.probe_epochs, e.probe_lr)


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def table(study: dict[str, Any]) -> list[str]:
    """The study's Markdown table and notes."""
    n = sum(r["which"] == "tuned" for r in study["retrained"])
    lines = [f"### {study['study']} ({study['trials']} trials in {study['wall_s'] / 60:.1f} min; "
             f"retrained {study['retrain_epochs']} epochs on all data, {n} seeds each, "
             f"{study['retrain_wall_s'] / 60:.1f} min)", "",
             "| features | " + " | ".join(METRICS.values()) + " |",
             "|---" * (len(METRICS) + 1) + "|",
             "| raw pixels | " + " | ".join(f"{study['raw'].get(k, float('nan')):.2f}"
                                           for k in METRICS) + " |"]  # fmt: skip
    tuned = "best tuned trial (the baseline won)" if study["baseline_won"] else "study winner"
    for which, label in (("baseline", "baseline (trial 0's config)"), ("tuned", tuned)):
        rows = [r for r in study["retrained"] if r["which"] == which]
        lines.append(
            f"| {label} | " + " | ".join(mean_std([r[k] for r in rows]) for k in METRICS) + " |"
        )
    row = study["tuned_row"]
    # the tuned trial's searched values; a conditional key its trial did not search is left out
    shown = {k: row[k] for k in study["tuned_searched"]}
    finalist = (
        f", finalists' mean {row['mean_over_seeds']:.2f} ± {row['std_over_seeds'] or 0:.2f}"
        f" over {row['seeds']} seeds"
        if row.get("mean_over_seeds") is not None
        else ""
    )
    walls = [r["wall_s"] for r in study["retrained"] if r.get("wall_s")]
    each = f"; {statistics.median(walls) / 60:.1f} min per retraining" if walls else ""
    won = study["winner_row"]
    lines += ["", f"study winner: trial #{won.get('number')}"
              + (" (the baseline)" if study["baseline_won"] else "")
              + f", {study['metric']} {won.get(study['metric'], float('nan')):.2f}"
              + (f" (finalists' mean {won['mean_over_seeds']:.2f} ± {won['std_over_seeds'] or 0:.2f}"
                 f" over {won['seeds']} seeds)" if won.get("mean_over_seeds") is not None else ""),
              f"retrained as tuned: trial #{row.get('number')} ({row.get('status')} after "
              f"{row.get('epochs')} epochs, {study['metric']} "
              f"{row.get(study['metric'], float('nan')):.2f}{finalist}{each}): "
              + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()),
              "gain over the baseline trial in the study (val, low fidelity): "
              f"{_fmt(study['parent_metrics'].get('study/gain_over_baseline'))}",
              "importances (fANOVA): " + ", ".join(f"{k} {_fmt(v)}" for k, v in study["importances"].items())]  # fmt: skip
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # fmt: off
    parser.add_argument("studies", nargs="*", default=STUDIES)
    parser.add_argument("--seeds", type=int, default=3, help="retraining seeds per config")
    parser.add_argument("--epochs", type=int, help="retraining epochs (default: the study's)")
    parser.add_argument("--jobs", type=int, default=2, help="retrainings at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per retraining")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for the retrainings")
    parser.add_argument("--study-set", action="append", default=[], help="KEY=VALUE for the studies")
    parser.add_argument("--out", type=Path, default=HERE / "bench_studies.json")
    parser.add_argument("--work", type=Path, help="keep the studies here (default: a temp dir)")
    parser.add_argument("--report", action="store_true", help="the tables from --out again")
    parser.add_argument("--smoke", action="store_true", help="digits, 2 trials, 2 epochs, 1 seed")
    # fmt: on
    args = parser.parse_args()
    if args.report:
        for study in json.loads(args.out.read_text()):
            print("\n".join(table(study)) + "\n")
        return
    if args.smoke:
        args.studies, args.seeds, args.epochs = ["search_spaces/mix_fashion_mnist.yaml"], 1, 2
        args.study_set = [*SMOKE, *args.study_set]
        args.set = ["data.source=digits", "model.width=8", "data.batch_size=128", *args.set]
    with tempfile.TemporaryDirectory(prefix="raysl-bench-studies-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out = work / "bench_studies.json" if args.smoke else args.out
        from raysl.launch.session import ray_session

        done: list[dict[str, Any]] = []
        for path in args.studies:
            with ray_session(log_file=work / "ray.log"):
                study = run_one_study(REPO / path, work, args.study_set)
            study["raw"] = raw_pixels({**study["base"], **parse_overrides(args.set)})
            retrain_all(study, args)
            done.append(study)
            out.write_text(json.dumps(done, indent=1, default=str))  # kept if a later one fails
            print("\n" + "\n".join(table(study)) + "\n", flush=True)
        print(f"results: {out}")


if __name__ == "__main__":
    main()
