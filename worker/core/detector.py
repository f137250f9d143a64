"""A drift detector on one model's 0/1 error stream that can tell a rise from a fall.

Detectors fire when a learner improves as well as when it gets worse, and the engine
resets a challenger only on a rise (ARCHITECTURE.md §3). river's ``drift.ADWIN`` keeps
the errors since its last reset as one window and, on an alarm, drops the older part:
the error rate of the dropped part ("before") against the kept part ("after") says which
way it went. Reading the window off the detector before every update costs two property
calls into its Rust core per model per event, so :class:`ErrorDetector` keeps the same
sum and count itself: ADWIN's window only shrinks on an alarm, and the update after an
alarm starts it afresh (``tests/unit/test_detector.py`` checks both against the
detector). Other detectors expose no window; their alarms carry no change.

>>> from worker.core.detector import ErrorDetector
>>> from river import drift
>>> d = ErrorDetector(drift.ADWIN())
>>> for i in range(2000):  # no errors, then only errors
...     if d.update(0 if i < 1000 else 1):
...         break
>>> i, d.change  # the alarm: error rate before and after ADWIN's cut
(1023, (0.0, 0.42857142857142855))
"""

from __future__ import annotations

from typing import Any

from river import drift


class ErrorDetector:
    """Wraps a river detector fed with 0/1 losses; :meth:`update` says whether it fired."""

    __slots__ = ("detector", "change", "_adaptive", "_sum", "_n")

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        #: after an alarm of an ADWIN: (error rate before, after) the change point, else None
        self.change: tuple[float, float] | None = None
        self._adaptive = type(detector) is drift.ADWIN
        # the errors in the detector's window and their number (a used one: from a snapshot)
        self._sum = float(detector.total) if self._adaptive else 0.0
        self._n = int(detector.width) if self._adaptive else 0

    def update(self, loss: int) -> bool:
        """Feed one loss; True when the detector signals a drift on it."""
        detector = self.detector
        if detector.drift_detected:  # the detector starts a new window with this update
            self._sum, self._n = 0.0, 0
        detector.update(loss)
        self._sum += loss
        self._n += 1
        if not detector.drift_detected:
            return False
        self.change = None
        if self._adaptive:
            kept_sum, kept = float(detector.total), float(detector.width)
            dropped = self._n - kept
            if dropped > 0 and kept > 0:
                self.change = (self._sum - kept_sum) / dropped, kept_sum / kept
            self._sum, self._n = kept_sum, int(kept)
        return True
