"""A periodic duty of the run loop, asked on every pass whether it is due.

>>> ticks = iter([0.0, 0.5, 1.0, 1.2, 2.3])
>>> status = Every(1.0, at_once=True, clock=lambda: next(ticks))
>>> [status.due() for _ in range(4)]
[True, False, True, False]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Every:
    """Due once per ``seconds`` (never when 0): first at the first call when ``at_once``,
    else ``seconds`` after it was made."""

    def __init__(self, seconds: float, *, at_once: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._last = -math.inf if at_once else clock()

    def due(self) -> bool:
        if not self.seconds:
            return False
        now = self._clock()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True
