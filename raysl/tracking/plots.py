"""Optuna's study plots as small PNG files (matplotlib), readable without Optuna or a browser.

Drawn from every trial that reported the metric, pruned (ASHA-stopped) trials included at their
last reported epoch, as optuna-dashboard does: Optuna's own plotting functions use COMPLETE
trials only, which in a study with ASHA leaves a few points (3 of 8 in the quickstart), and
importances from 3 points disagree with the dashboard's. The plots are drawn from an in-memory
copy of the study in which each such trial is COMPLETE with that value; the history plot says
so in its title.

Readability: axes are named by the study's metric (not "Objective Value"), params by short
names (`infonce τ`), and parallel coordinates use a colour map whose lowest value is not white.
No HTML: a plotly file embeds plotly.js (~4.8 MB each) to open offline.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysl.tracking.describe import short_key

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate")
MIN_TRIALS = 2  # importances and parallel coordinates need at least two trials with a value


def write_optuna_plots(study: optuna.Study, out_dir: Path, metric: str | None = None) -> list[Path]:
    """Write `<plot>.png` for each of PLOTS into `out_dir`; returns the files.

    Skipped, with a line in the log, when fewer than MIN_TRIALS trials reported, and per plot
    when Optuna cannot draw it (e.g. no varying parameter). A multi-objective study gets
    `pareto_front.png` only (`write_pareto_plot`).
    """
    if len(study.directions) > 1:
        return write_pareto_plot(study, out_dir)
    metric = metric or (study.metric_names or [None])[0] or "objective"
    copy, pruned = reported_study(study)
    count = sum(t.state.name == "COMPLETE" for t in copy.trials)
    if count < MIN_TRIALS:
        logger.info(
            "Optuna plots skipped: %d trial(s) reported a value, at least %d needed",
            count,
            MIN_TRIALS,
        )
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    curves = any(t.intermediate_values for t in copy.trials)
    for name in PLOTS:
        if name == "intermediate_values" and not curves:
            continue  # no trial reported per epoch
        path = out_dir / f"{name}.png"
        try:
            _png(copy, name, path, metric, pruned)
        except Exception as error:  # an optional extra must not end the study
            logger.info("Optuna plot %s skipped: %s: %s", path.name, type(error).__name__, error)
        else:
            written.append(path)
    return written


def write_pareto_plot(study: optuna.Study, out_dir: Path) -> list[Path]:
    """`pareto_front.png`: every complete trial by its objectives (axes named by the study's
    metrics), the Pareto front highlighted (`optuna.visualization.matplotlib.plot_pareto_front`)."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis

    if sum(t.state.name == "COMPLETE" for t in study.trials) < 1:
        logger.info("Pareto-front plot skipped: no complete trial")
        return []
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    goals = [f"{n} ({d.name.lower()[:3]})" for n, d in zip(names, study.directions, strict=True)]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pareto_front.png"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = vis.plot_pareto_front(study, target_names=goals)
        ax.set_title(f"Pareto front: {', '.join(goals)}")
        legend = ax.get_legend()
        for text in legend.get_texts() if legend is not None else ():
            text.set_text({"Best Trial": "on the Pareto front"}.get(text.get_text(), "trial"))
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
    except Exception as error:  # an optional extra must not end the study
        logger.info("Pareto-front plot skipped: %s: %s", type(error).__name__, error)
        return []
    return [path]


def reported_study(study: optuna.Study) -> tuple[optuna.Study, int]:
    """An in-memory copy with every trial that has a value, or intermediate values, as COMPLETE
    (pruned ones at their last reported value) and params under short names; and how many of
    them were pruned."""
    import optuna
    from optuna.trial import TrialState

    names = _short_names({k for t in study.trials for k in t.params})
    copy = optuna.create_study(directions=study.directions)
    pruned = 0
    for trial in study.get_trials(deepcopy=False):
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        reported = trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and value is not None
        pruned += reported and trial.state == TrialState.PRUNED
        copy.add_trial(  # FAIL for the others: plots skip them, trial numbers stay the same
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if reported else TrialState.FAIL,
                value=value if reported else None,
                params={names[k]: v for k, v in trial.params.items()},
                distributions={names[k]: d for k, d in trial.distributions.items()},
                intermediate_values=dict(trial.intermediate_values) if reported else {},
            )
        )
    return copy, pruned


def _short_names(keys: set[str]) -> dict[str, str]:
    short = {k: short_key(k) for k in keys}
    if len(set(short.values())) < len(short):  # a clash: keep the dotted keys
        return {k: k for k in keys}
    return short


def _png(study: optuna.Study, name: str, path: Path, metric: str, pruned: int) -> None:
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; left alone if the program chose a backend
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis

    kwargs: dict[str, Any] = {} if name == "intermediate_values" else {"target_name": metric}
    if name == "param_importances":
        from optuna.importance import FanovaImportanceEvaluator

        kwargs["evaluator"] = FanovaImportanceEvaluator(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = getattr(vis, f"plot_{name}")(study, **kwargs)
    ax = axes if hasattr(axes, "figure") else axes.flat[0]
    figure = ax.figure
    try:
        if name == "optimization_history":
            note = f" ({pruned} stopped at their last epoch)" if pruned else ""
            ax.set_title(f"{metric} per trial{note}")
            ax.set_ylabel(metric)
        elif name == "intermediate_values":
            ax.set_title(f"{metric} per epoch")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            legend = ax.get_legend()
            if legend is not None and len(study.trials) > 12:
                legend.remove()  # a legend of many trials hides the curves
        elif name == "parallel_coordinate":
            for collection in ax.collections:
                collection.set_cmap("viridis")  # Blues draws the lowest value white
            from matplotlib.ticker import NullFormatter

            for other in figure.axes:  # log axes label every minor tick: unreadable
                other.yaxis.set_minor_formatter(NullFormatter())
            axes_count = 1 + len({k for t in study.trials for k in t.params})
            figure.set_size_inches(max(8.0, 1.9 * axes_count), 5.0)  # room between the axes
            for label in ax.get_xticklabels():
                label.set_rotation(20)
                label.set_horizontalalignment("right")
        figure.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
