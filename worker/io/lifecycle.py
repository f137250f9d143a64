"""Which lifecycle event on ``control`` says what serves (ARCHITECTURE.md §2, §5).

Scorers serve the champion, challenger and split that the trainer's latest lifecycle
event names. With signed commands required, only events the trainer signed count, and
among those the one signed last (``signed_at``): a copy of an old signed event written
again must not turn every scorer back to an old model. The trainer keeps ``signed_at``
increasing (:class:`SigningClock`), across restarts and clock steps too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from worker.core.types import LifecycleEvent
from worker.errors import BadInputError
from worker.io import kafka
from worker.io.codec import decode_command, signing_time, verify_command

log = logging.getLogger("worker.lifecycle")

SCAN = 1000  # control messages read per step back from its end
DEPTH = 20_000  # how far back the signed events are compared (a week of status reports is ~10,000)
Signed = tuple[LifecycleEvent, float]  # a lifecycle event and when it was signed (-inf: unknown)


def latest_lifecycle(reader: Any, topic: str, secrets: Sequence[bytes] | None = None,
                     warn: bool = True) -> Signed | None:
    """The lifecycle event on ``topic`` to follow (see :func:`latest_of`), read back from
    the end a block at a time, so a long control log costs only its tail."""
    blocks = ([msg.value() for msg in block] for block in kafka.read_backwards(reader, topic, SCAN))
    return latest_of(blocks, secrets, warn)


def latest_of(blocks: Iterable[list[bytes | None]], secrets: Sequence[bytes] | None = None,
              warn: bool = True) -> Signed | None:
    """Of control's messages, in blocks from the newest back (each in log order): the last
    lifecycle event written that names a champion, or None; when ``secrets`` are given,
    the one signed last among the newest :data:`DEPTH` messages (of equals, the last
    written), so that an old signed event written again does not decide — unless more
    than DEPTH other messages follow it, until the trainer's next event."""
    found, read = None, 0
    for block in blocks:
        best = None
        for value in block:  # in log order: of equals, the later one
            best = newer(best, lifecycle_of(value, secrets, warn))
        if best is not None and (found is None or best[1] > found[1]):  # of equals, the newer block's
            found = best
        read += len(block)
        if secrets is None and found is not None:
            break  # the newest block that holds one: the last one written wins
        if secrets is not None and read >= DEPTH:
            break
    return found


def newer(current: Signed | None, read: Signed | None) -> Signed | None:
    """What to follow: ``read`` unless it was signed before ``current``."""
    if read is None or (current is not None and read[1] < current[1]):
        return current
    return read


def lifecycle_of(value: bytes | None, secrets: Sequence[bytes] | None, warn: bool = True) -> Signed | None:
    """The lifecycle event ``value`` holds and when it was signed, when it names a champion
    and, if ``secrets`` are given (signed commands required), carries a trainer's
    signature: anyone else could otherwise choose the model and the split that every
    scorer serves. A signed event of a release that wrote no ``signed_at`` is older than
    any that does."""
    try:
        decoded, raw = decode_command(value)
    except BadInputError:
        return None
    if not isinstance(decoded, LifecycleEvent) or decoded.champion is None:
        return None
    if secrets is None:
        return decoded, -math.inf  # not required: the last one wins, as it comes
    if not verify_command(raw, secrets):
        if warn:
            _say_ignored(decoded.type)
        return None
    signed_at = raw.get("signed_at")
    return decoded, float(signed_at) if type(signed_at) in (int, float) else -math.inf


_ignored = {"since": 0, "said_at": -math.inf}  # lines about unsigned events: at most one per 10 s


def _say_ignored(kind: str) -> None:
    _ignored["since"] += 1
    if time.monotonic() - _ignored["said_at"] >= 10:
        log.warning("ignored a %s on control without a valid signature (signed commands are required; "
                    "%d such events since the last line)", kind, _ignored["since"])
        _ignored.update(since=0, said_at=time.monotonic())


class SigningClock:
    """``signed_at`` for the trainer's lifecycle events: wall-clock milliseconds, never
    rounded up, and always after the last one given or seen — so a clock stepped back
    (NTP), or a trainer restarted on a host whose clock is behind, is still followed."""

    def __init__(self, after: float = -math.inf) -> None:
        self.last = after

    def seen(self, signed_at: float) -> None:
        self.last = max(self.last, signed_at)

    def next(self) -> float:
        now = signing_time()
        self.last = now if now > self.last else self.last + 0.001
        return self.last
