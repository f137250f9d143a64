"""A bounded map id → item, kept until its match arrives.

The engine needs two of these (ARCHITECTURE.md §3): predictions waiting for their
delayed label, and labels that arrived before their event. Both sides may never get
their match (a label is lost, an event was dead-lettered), so the buffer is bounded
by count and by age and *counts* what it evicts, instead of growing until the process
dies or silently dropping data.

The buffer never reads a clock: the caller passes ``now`` explicitly, in whatever
unit it ages entries in — event time in seconds when events carry ``ts``, else an
event counter. That keeps it deterministic, so replaying the same input after a crash
rebuilds exactly the same buffer (§4).

Age eviction is approximate when ``now`` is not monotonic. Entries are kept in
insertion order and :meth:`PendingBuffer.expire` only pops from the front while the
front entry is too old; an old entry stuck behind a younger one (out-of-order event
time) waits until everything in front of it has gone. That is deliberate: it keeps
``expire`` O(evicted), i.e. O(1) amortised per entry, with no heap or scan, and the
count bound still caps memory. Such an entry is evicted a little late, never lost
without being counted, and it can still be matched meanwhile — which is harmless.

>>> from worker.core.pending import PendingBuffer
>>> buf = PendingBuffer(max_items=2, max_age=10)
>>> buf.put("a", "features of a", now=0)
[]
>>> buf.put("b", "features of b", now=5)
[]
>>> buf.put("c", "features of c", now=6)  # over capacity: the oldest goes
[('a', 'features of a')]
>>> buf.pop("b")
'features of b'
>>> buf.expire(now=17)  # c was put at 6: 11 > 10
[('c', 'features of c')]
>>> len(buf), buf.counters()
(0, {'matched': 1, 'duplicates': 0, 'evicted_capacity': 1, 'evicted_age': 1})

"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from worker.errors import ConfigError, DuplicateIdError

__all__ = ["PendingBuffer"]


class PendingBuffer:
    """Insertion-ordered, bounded map id → item.

    Parameters
    ----------
    max_items
        At most this many entries are kept; :meth:`put` evicts the oldest to make room.
    max_age
        An entry put at ``t`` is evicted by :meth:`expire` once ``now - t > max_age``.
        ``None`` means no age bound (count only).

    An ``OrderedDict`` rather than a ``dict``: popping the oldest entry of a plain dict
    again and again is not O(1) in CPython (iteration skips the deleted slots left at
    the front), ``OrderedDict.popitem(last=False)`` is.
    """

    def __init__(self, max_items: int, max_age: float | None = None) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigError(f"max_items must be an integer >= 1, got {max_items!r}")
        if max_age is not None and (
            isinstance(max_age, bool)
            or not isinstance(max_age, int | float)
            or not math.isfinite(max_age)
            or max_age < 0
        ):
            raise ConfigError(f"max_age must be a finite number >= 0 or None, got {max_age!r}")
        self.max_items = max_items
        self.max_age = max_age
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.matched = 0
        self.duplicates = 0
        self.evicted_capacity = 0
        self.evicted_age = 0

    def put(self, id: str, item: Any, now: float) -> list[tuple[str, Any]]:
        """Keep ``item`` under ``id``; return the ``(id, item)`` evicted to make room.

        Raises `DuplicateIdError` (and counts it) if ``id`` is already pending: a
        second event with a pending id is rejected, the first one stays.
        """
        self.refuse_pending(id)
        evicted = []
        while len(self._entries) >= self.max_items:
            old_id, (_, old_item) = self._entries.popitem(last=False)
            evicted.append((old_id, old_item))
        self.evicted_capacity += len(evicted)
        self._entries[id] = (now, item)
        return evicted

    def refuse_pending(self, id: str) -> None:
        """Raise `DuplicateIdError` (and count it) if ``id`` is pending."""
        if id in self._entries:
            self.duplicates += 1
            raise DuplicateIdError(f"id {id!r} is already pending")

    def discard(self, id: str) -> None:
        """Drop what waits under ``id``, counted as a duplicate: its match came with one of
        its own (an event with an inline label, for a label that came first)."""
        if self._entries.pop(id, None) is not None:
            self.duplicates += 1

    def pop(self, id: str) -> Any | None:
        """Remove and return the item pending under ``id`` (its match arrived), or None."""
        entry = self._entries.pop(id, None)
        if entry is None:
            return None
        self.matched += 1
        return entry[1]

    def expire(self, now: float) -> list[tuple[str, Any]]:
        """Evict and return, oldest first, the front entries older than ``max_age``.

        Stops at the first entry that is not too old (see the module docstring for why
        this is approximate when ``now`` goes backwards). O(number evicted).
        """
        if self.max_age is None:
            return []
        evicted = []
        entries = self._entries
        while entries:
            first = next(iter(entries))
            if not now - entries[first][0] > self.max_age:
                break
            _, (_, item) = entries.popitem(last=False)
            evicted.append((first, item))
        self.evicted_age += len(evicted)
        return evicted

    def restamp(self, now: float) -> None:
        """Date every entry ``now``: the caller's clock changed units (event counts, then
        event time), and ages across the change would mean nothing."""
        entries = self._entries
        for id, (_, item) in entries.items():
            entries[id] = (now, item)

    def counters(self) -> dict[str, int]:
        """The counters, for metrics and status reports."""
        return {
            "matched": self.matched,
            "duplicates": self.duplicates,
            "evicted_capacity": self.evicted_capacity,
            "evicted_age": self.evicted_age,
        }

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id: object) -> bool:
        return id in self._entries

    def __repr__(self) -> str:
        return (
            f"PendingBuffer(max_items={self.max_items}, max_age={self.max_age}, "
            f"pending={len(self)}, {self.counters()})"
        )
