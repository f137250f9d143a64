"""ErrorDetector keeps ADWIN's window sum and width itself: check them against the detector."""

from __future__ import annotations

import random

import pytest
from river import drift

from worker.core.detector import ErrorDetector


def errors(seed: int, n: int = 20_000):
    """0/1 losses whose rate jumps between 5 % and 60 % every few thousand events."""
    rng = random.Random(seed)
    rate = 0.05
    for i in range(n):
        if i % 3000 == 2999:
            rate = 0.6 if rate < 0.3 else 0.05
        yield 1 if rng.random() < rate else 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tracked_window_is_adwins_own_at_every_step(seed):
    tracked = ErrorDetector(drift.ADWIN())
    reference = drift.ADWIN()  # the same detector fed alone, read through its properties
    alarms = 0
    for loss in errors(seed):
        before = (float(reference.total), float(reference.width))
        reference.update(loss)
        fired = tracked.update(loss)
        assert fired == reference.drift_detected
        if fired:
            alarms += 1
            kept_sum, kept = float(reference.total), float(reference.width)
            # the reset that ADWIN makes on the update after an alarm shows in `before`
            # only then; on an alarm the old code read (sum, width) before the update
            dropped = before[1] + 1 - kept
            assert tracked.change == ((before[0] + loss - kept_sum) / dropped, kept_sum / kept)
        assert (tracked._sum, tracked._n) == (float(reference.total), reference.width)
    assert alarms >= 4  # the stream does drift, so the alarm path was checked


def test_a_rise_and_a_fall_are_told_apart():
    up = ErrorDetector(drift.ADWIN())
    changes = [up.change for loss in errors(7) if up.update(loss)]
    assert any(after > before for before, after in changes)
    assert any(after < before for before, after in changes)


def test_detectors_without_a_window_fire_without_a_change():
    d = ErrorDetector(drift.binary.DDM())
    fired = [d.update(loss) for loss in errors(5)]
    assert any(fired) and d.change is None
