"""The one interface through which the engine reports what it does, for metrics.

The engine calls these hooks (the run loop calls the last four: timings, dead letters);
the Prometheus edge (`worker.obs`) overrides them. The default does nothing, so the core
never depends on a metrics library. Per-model metric values are not pushed through
here: an exporter reads them from `Engine.status()` when it is scraped.
"""

from __future__ import annotations

from worker.core.types import LifecycleEvent


class Observer:
    """No-op hooks; subclass and override what you export."""

    def event_scored(self, served_by: str) -> None:
        """One event was scored and a prediction served by ``served_by``."""

    def bad_input(self, reason: str) -> None:
        """An input was refused (duplicate id, the champion raised); it goes to the DLQ. (A
        model that cannot learn a served event is not bad input: ``counts["learn_errors"]``.)"""

    def label_joined(self) -> None:
        """A label that came on its own was matched with its event (inline labels are not
        reported: they are every labelled event that was not joined)."""

    def pending_evicted(self, kind: str, reason: str, count: int) -> None:
        """``count`` entries left a pending buffer unmatched (``kind``: "predictions"
        waiting for labels, or "labels" waiting for their event; ``reason``: "age", they
        expired, "capacity", the buffer was full, or, for a label, "late": it came after its
        prediction was dropped, so it is dropped too instead of waiting)."""

    def lifecycle(self, event: LifecycleEvent) -> None:
        """A lifecycle event was emitted (promotion, rollback, drift, command answer)."""

    # --- called by the runtime (worker.runtime), not by the engine ------------------------

    def observe_batch(self, seconds: float, events: int) -> None:
        """The run loop handled ``events`` input messages in ``seconds`` (consume wait
        excluded). Called on the loop's thread after every consume, also with 0 events."""

    def observe_transaction(self, seconds: float) -> None:
        """A transaction was committed ``seconds`` after the first input it holds was
        handled (exactly-once only)."""

    def observe_checkpoint(self, seconds: float) -> None:
        """An engine snapshot (with its offsets) was written in ``seconds``."""

    def dead_letter(self) -> None:
        """One input message was written to the dead-letter topic."""
