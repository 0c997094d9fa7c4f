"""`EpochLog`: epochs reach MLflow once committed, each once, from the attempt that lasted.

The real-Ray counterpart (a trial killed between Tune's result and its checkpoint) is
`tests/launch/test_faults.py::test_a_trial_killed_before_its_checkpoint_registers_logs_each_epoch_once`.
"""

from __future__ import annotations

from raysl.launch.epoch_log import EpochLog


def _log() -> tuple[EpochLog, list[tuple[str, int, float]]]:
    delivered: list[tuple[str, int, float]] = []
    log = EpochLog(lambda trial, metrics, epoch: delivered.append((trial, epoch, metrics["v"])))
    return log, delivered


def test_nothing_is_delivered_before_a_commit_and_a_commit_delivers_in_epoch_order() -> None:
    log, delivered = _log()
    log.add("a", {"v": 1.0}, 1)
    log.add("b", {"v": 9.0}, 1)
    log.add("a", {"v": 2.0}, 2)
    assert delivered == []
    log.commit("a")
    assert delivered == [("a", 1, 1.0), ("a", 2, 2.0)]  # b's epoch still held
    log.commit("a")  # nothing held: nothing again
    assert delivered == [("a", 1, 1.0), ("a", 2, 2.0)]
    log.commit("b")
    assert delivered[-1] == ("b", 1, 9.0)


def test_a_retry_drops_the_held_epochs_and_the_rerun_is_delivered_once() -> None:
    log, delivered = _log()
    log.add("a", {"v": 1.0}, 1)
    log.commit("a")  # the epoch-1 checkpoint registered
    log.add("a", {"v": 2.0}, 2)  # killed before the epoch-2 checkpoint registered
    log.drop("a")
    log.add("a", {"v": 2.5}, 2)  # the retry, from the epoch-1 checkpoint
    log.commit("a")
    assert delivered == [("a", 1, 1.0), ("a", 2, 2.5)]


def test_a_restart_not_announced_replaces_the_held_epochs_from_its_epoch_on() -> None:
    log, delivered = _log()
    for epoch in (1, 2, 3):
        log.add("a", {"v": float(epoch)}, epoch)
    log.add("a", {"v": 20.0}, 2)  # continued from an epoch-1 checkpoint (a PBT exploit)
    log.add("a", {"v": 30.0}, 3)
    log.commit("a")
    assert delivered == [("a", 1, 1.0), ("a", 2, 20.0), ("a", 3, 30.0)]
