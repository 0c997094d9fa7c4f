"""Optuna's study plots as files: interactive HTML (plotly) and PNG (matplotlib)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
MIN_COMPLETED = 2  # importances and parallel coordinates need at least two finished trials


def write_optuna_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Write `<plot>.html` and `<plot>.png` for each of PLOTS into `out_dir`; returns the files.

    Skipped, with a line in the log, when fewer than MIN_COMPLETED trials completed, for a
    multi-objective study, and per plot when Optuna cannot draw it (e.g. no varying
    parameter). The HTML files embed plotly.js, so they open offline (about 5 MB each).
    """
    import optuna

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < MIN_COMPLETED:
        logger.info(
            "Optuna plots skipped: %d completed trial(s), at least %d needed",
            len(completed),
            MIN_COMPLETED,
        )
        return []
    if len(study.directions) > 1:
        logger.info("Optuna plots skipped: multi-objective study")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name in PLOTS:
            for kind, write in (("html", _html), ("png", _png)):
                path = out_dir / f"{name}.{kind}"
                try:
                    write(study, name, path)
                except Exception as error:  # an optional extra must not end the study
                    logger.info(
                        "Optuna plot %s skipped: %s: %s", path.name, type(error).__name__, error
                    )
                else:
                    written.append(path)
    return written


def _evaluator_kwargs(name: str) -> dict:
    if name != "param_importances":
        return {}
    from optuna.importance import FanovaImportanceEvaluator

    return {"evaluator": FanovaImportanceEvaluator(seed=0)}  # the same numbers in both files


def _html(study: optuna.Study, name: str, path: Path) -> None:
    import optuna.visualization as vis

    figure = getattr(vis, f"plot_{name}")(study, **_evaluator_kwargs(name))
    figure.write_html(str(path), include_plotlyjs=True, full_html=True)


def _png(study: optuna.Study, name: str, path: Path) -> None:
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; left alone if the program chose a backend
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    axes = getattr(vis, f"plot_{name}")(study, **_evaluator_kwargs(name))
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
