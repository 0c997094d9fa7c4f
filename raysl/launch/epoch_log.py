"""Per-epoch metrics reach MLflow once a checkpoint has made the epoch permanent.

Tune hands a result to callbacks (`on_trial_result`) *before* it registers the checkpoint that
came with it: that happens in a separate save step, ending in `on_checkpoint`
(`ray.tune.execution.tune_controller`, Ray 2.60). A trial process killed between the two (a
reclaimed node, an OOM kill) is retried from its previous checkpoint, so it runs the epoch
again; logged at once, that epoch would appear twice in the run's history, the first value
from an attempt nothing continues. The same holds for the epochs between two checkpoints when
`checkpoint.every` > 1.

So a study's callbacks hold each trial's new epochs here and deliver them when the epoch is
committed: when Tune registers the trial's next checkpoint, or when the trial ends (completed,
stopped by ASHA, or failed for good: then no attempt follows and what it measured stands). A
retry drops them (it runs them again). A new result for an epoch already held (a restart not
announced as a retry, e.g. a PBT exploit from an earlier epoch) replaces the held ones from
that epoch on. The live terminal table still shows every epoch as it arrives; MLflow lags it by
at most the epochs since the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


class EpochLog:
    """Held epochs per trial; `deliver(trial_id, metrics, epoch)` logs one (in epoch order).

    Args:
        deliver: what logs one epoch's metrics (the study's outbox call to
            `StudyTracker.trial_result`).
    """

    def __init__(self, deliver: Callable[[str, dict[str, float], int], None]) -> None:
        self.deliver = deliver
        self.held: dict[str, list[tuple[int, dict[str, float]]]] = {}

    def add(self, trial_id: str, metrics: Mapping[str, float], epoch: int) -> None:
        """Hold epoch `epoch`; any held epoch >= it belonged to an attempt that did not last."""
        kept = [(e, m) for e, m in self.held.get(trial_id, []) if e < epoch]
        self.held[trial_id] = [*kept, (epoch, dict(metrics))]

    def commit(self, trial_id: str) -> None:
        """Deliver the trial's held epochs (a checkpoint made them permanent, or it ended)."""
        for epoch, metrics in self.held.pop(trial_id, []):
            self.deliver(trial_id, metrics, epoch)

    def drop(self, trial_id: str) -> None:
        """Forget the trial's held epochs (it is retried from its last checkpoint)."""
        self.held.pop(trial_id, None)
