"""Anytime curves of a search benchmark (`bench_search.py`), from its table of epoch results.

The table has one row per epoch result of every trial: `method`, `seed`, `trial`, `epoch`,
`val/knn_top1`, `timestamp` (ms, when the study's driver logged the result) and `budget` (the
study's budget in trial-epochs). One study is one (method, seed).

- **Trial-epochs spent** (`spent`): within a study, the results ordered by timestamp (ties:
  trial, epoch) and numbered 1, 2, …: each result is one epoch some trial trained, so the
  n-th result to arrive is the moment n trial-epochs were spent, whatever ran concurrently.
- **Anytime curve**: the best `val/knn_top1` of any result so far (any trial, any epoch),
  against trial-epochs spent, up to the study's budget; results past it are cut.
- **Final best**: the curve at the budget (the best result within it).
- **Budget fraction**: per seed, the first `spent` / budget at which a method's curve reaches
  (>=) the final best of the reference method (random search) at that seed; methods of one
  seed share the val split, the training subset and the training seed, so they are paired.
  None where it is never reached within the budget.

No Ray, no MLflow: `tests/test_benchmarks.py` checks these against a hand-made table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

METRIC = "val/knn_top1"
STUDY = ["method", "seed"]


def with_spent(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with `spent` (trial-epochs spent when each result arrived), per study."""
    order = {m: i for i, m in enumerate(pd.unique(table["method"]))}  # methods as they came
    table = table.assign(_order=table["method"].map(order))
    table = table.sort_values(["_order", "seed", "timestamp", "trial", "epoch"], kind="stable")
    table = table.drop(columns="_order").reset_index(drop=True)
    table["spent"] = table.groupby(STUDY, sort=False).cumcount() + 1
    return table


def curve(study: pd.DataFrame, budget: int) -> np.ndarray:
    """Best value so far after 1 … `budget` trial-epochs (NaN before the first result; the
    last value carried on where the study spent less than its budget)."""
    best = np.full(budget, np.nan)
    rows = study[study["spent"] <= budget]
    best[rows["spent"].to_numpy() - 1] = rows[METRIC].to_numpy()
    return pd.Series(best).cummax().ffill().to_numpy()  # cummax skips NaN


def first_reach(study: pd.DataFrame, target: float, budget: int) -> float | None:
    """The fraction of `budget` spent when the study's best first reached `target`."""
    hits = study[(study["spent"] <= budget) & (study[METRIC] >= target)]
    return None if hits.empty else float(hits["spent"].min()) / budget


def summarise(table: pd.DataFrame, reference: str = "random") -> list[dict[str, Any]]:
    """Per method (in table order): per seed the final best, the trial-epochs spent within
    the budget, the trials that started within it and the budget fraction at which the
    reference's final best (same seed) was first reached."""
    table = table if "spent" in table else with_spent(table)
    finals: dict[tuple[str, int], float] = {}
    for (method, seed), study in table.groupby(STUDY, sort=False):
        finals[method, seed] = float(np.nanmax(curve(study, int(study["budget"].iloc[0]))))
    rows = []
    for method, by_method in table.groupby("method", sort=False):
        seeds, finals_m, fractions, spent, trials = [], [], [], [], []
        for seed, study in by_method.groupby("seed", sort=True):
            budget = int(study["budget"].iloc[0])
            within = study[study["spent"] <= budget]
            seeds.append(int(seed))
            finals_m.append(finals[method, seed])
            spent.append(int(within["spent"].max()))
            trials.append(int(within["trial"].nunique()))
            target = finals.get((reference, seed), math.nan)  # NaN: no reference, never met
            fractions.append(first_reach(study, target, budget))
        test = (
            by_method.groupby("seed")["winner_test"].first() if "winner_test" in by_method else []
        )
        rows.append({
            "method": method, "seeds": seeds, "final": finals_m, "fraction": fractions,
            "spent": spent, "trials": trials, "budget": int(by_method["budget"].iloc[0]),
            "reference": any((reference, s) in finals for s in seeds),
            "winner_test": [float(t) for t in test],
        })  # fmt: skip
    return rows


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def fraction_text(fractions: list[float | None]) -> str:
    """`0.42 (0.25, 0.50, 0.50)`: the mean and each seed's; `not reached` where no seed
    reached it; where some did, the mean over those and how many (`—`: not reached)."""
    each = ", ".join("—" if f is None else f"{f:.2f}" for f in fractions)
    reached = [f for f in fractions if f is not None]
    if not reached:
        return f"not reached ({each})" if len(fractions) > 1 else "not reached"
    head = f"{statistics.fmean(reached):.2f}"
    if len(reached) < len(fractions):
        return f"{head}, reached in {len(reached)} of {len(fractions)} seeds ({each})"
    return f"{head} ({each})" if len(fractions) > 1 else head


def table_lines(rows: list[dict[str, Any]], reference: str = "random") -> list[str]:
    """The per-method table as printed (one line per method)."""
    lines = [
        f"{'method':<10} {'seeds':>5} {'trial-epochs':>12} {'trials':>7}  "
        f"{'final best ' + METRIC + ' (mean ± std)':<36} budget fraction to reach "
        f"{reference}'s final best (per seed)"
    ]
    for r in rows:
        mean, std = mean_std(r["final"])
        spent = f"{min(r['spent'])}/{r['budget']}"
        trials = f"{statistics.fmean(r['trials']):.1f}"
        final = f"{mean:.2f} ± {std:.2f} %" if not math.isnan(std) else f"{mean:.2f} %"
        fraction = fraction_text(r["fraction"]) if r["reference"] else f"no {reference} run"
        lines.append(
            f"{r['method']:<10} {len(r['seeds']):>5} {spent:>12} {trials:>7}  {final:<36} "
            f"{fraction}"
        )
    # studies that ran no test evaluation (eval.test: false) log none: NaN, left out
    tested = [(r["method"], [t for t in r["winner_test"] if not math.isnan(t)]) for r in rows]
    tests = [(m, t) for m, t in tested if t]
    if tests:  # not cut at the budget; the test split no trial was ranked on
        each = ", ".join(f"{m} {mean_std(t)[0]:.2f} %" for m, t in tests)
        lines.append(f"test kNN of each study's winner (mean over seeds): {each}")
    return lines


def plot(table: pd.DataFrame, path: Any, title: str) -> None:
    """Anytime curves: per method the mean over seeds of the best value so far, and the band
    from the lowest to the highest seed, against trial-epochs spent; a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table if "spent" in table else with_spent(table)
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    for method, by_method in table.groupby("method", sort=False):
        budget = int(by_method["budget"].iloc[0])
        curves = np.stack([curve(s, budget) for _, s in by_method.groupby("seed")])
        x = np.arange(1, budget + 1)
        ok = ~np.isnan(curves).any(axis=0)  # from where every seed has a result
        mean = curves[:, ok].mean(axis=0)
        (line,) = ax.plot(x[ok], mean, lw=1.6, drawstyle="steps-post", label=method)
        ax.fill_between(
            x[ok], curves[:, ok].min(axis=0), curves[:, ok].max(axis=0), step="post",
            alpha=0.18, color=line.get_color(), lw=0,
        )  # fmt: skip
    finals = [np.nanmax(curve(st, int(st["budget"].iloc[0])))
              for _, st in table[table["method"] == "random"].groupby("seed")]  # fmt: skip
    if finals:  # the target the budget fractions are measured against
        ax.axhline(float(np.mean(finals)), color="grey", ls=":", lw=1)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel(f"best {METRIC} so far (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
