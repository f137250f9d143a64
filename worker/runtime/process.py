"""What the worker and the scorer do alike as long-running processes: stop cleanly on a
signal, keep the start-up objects out of the cyclic GC's reach, name versions in logs."""

from __future__ import annotations

import gc
import logging
import os
import signal
from typing import Any

log = logging.getLogger("worker.run")


def version_label(version: int | None) -> str:
    """For log lines: ``v3``, or ``none`` (no challenger yet, nothing served yet)."""
    return "none" if version is None else f"v{version}"


def freeze_what_is_there() -> None:
    """Take every object alive now out of the cyclic GC's reach (``gc.freeze``): once the
    worker is ready that is mostly the imported libraries (~90,000 objects, which every
    full collection would otherwise scan again: ~30 ms each, a pause in serving). What
    an earlier start froze is collected first if it is garbage by now, so at most the
    objects of one start stay frozen (a model is freed by reference counting anyway;
    river's hold no cycles)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def install_stop_signals(owner: Any, what_next: str) -> None:
    """SIGTERM/SIGINT set ``owner.stopping`` (its loop finishes cleanly); a second one
    exits at once."""

    def stop(signum: int, _frame: Any) -> None:
        if owner.stopping:
            log.warning("second signal: exiting at once")
            os._exit(130)
        log.info("signal %d: %s", signum, what_next)
        owner.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
