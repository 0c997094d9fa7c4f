"""A study that Tune stopped on a signal is interrupted, not completed.

Ray Tune catches SIGUSR1 always, and SIGINT unless `TUNE_DISABLE_SIGINT_HANDLER` is set
(`ray.tune.tune._setup_signal_catching`): it then stops the trials and `Tuner.fit()` returns
normally, so the study would be summarised, ranked and tagged `raysl.status=completed` with a
trial cut short in the middle. raysl sets the variable (`raysl.launch.session`), so Ctrl-C
raises KeyboardInterrupt in the driver; `finished_or_interrupted` catches the other way in: a
trial the study's callback saw start and never end once `fit()` has returned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class StudyInterrupted(KeyboardInterrupt):
    """Tune returned with trials still running: handled as the Ctrl-C it stands for."""


@contextmanager
def finished_or_interrupted(
    statuses: Mapping[str, Mapping[str, Any]], time_budget_s: float | None = None
) -> Iterator[None]:
    """Around `Tuner.fit()`: raise `StudyInterrupted` when, once it has returned, a trial in
    `statuses` (trial id -> the callback's record, `raysl.launch.tune_tracking.StudyCallback`)
    is still "running". Tune ends trials that way on a signal, and also when `time_budget_s`
    runs out (`TuneController._stop_experiment_if_needed` stops them without
    `on_trial_complete`): after the budget that is the study's planned end, not an interrupt."""
    started = time.monotonic()
    yield
    running = sorted(t for t, record in statuses.items() if record.get("status") == "running")
    budget_spent = time_budget_s is not None and time.monotonic() - started >= time_budget_s
    if running and not budget_spent:
        raise StudyInterrupted(f"Tune stopped the study with {len(running)} trial(s) running")
