"""What scorers follow on control (worker/io/lifecycle.py): with signed commands required,
only lifecycle events the trainer signed, and among those the one signed last — a copy of
an old one written again must not turn them back to an old model."""

from __future__ import annotations

import math

import orjson

from worker.core.types import LifecycleEvent
from worker.io.codec import encode_lifecycle, sign_command
from worker.io.lifecycle import DEPTH, SigningClock, latest_of, lifecycle_of, newer

KEY = (b"trainer secret",)


def promoted(champion: int, signed_at: float | None = None, secret: bytes | None = KEY[0]) -> bytes:
    event = LifecycleEvent(type="promoted", champion=champion, challenger=champion + 1, split=0.0)
    return encode_lifecycle(event, secret, signed_at)


def legacy(champion: int) -> bytes:
    """Signed as a release without ``signed_at`` signed."""
    event = orjson.loads(promoted(champion, secret=None))
    event["signature"] = sign_command(event, KEY[0])
    return orjson.dumps(event)


def follow(*messages: bytes, secrets=KEY):
    wanted = None
    for message in messages:
        wanted = newer(wanted, lifecycle_of(message, secrets))
    return None if wanted is None else wanted[0].champion


def test_the_last_signed_wins_not_the_last_written():
    assert follow(promoted(1, 10.0), promoted(2, 20.0)) == 2
    assert follow(promoted(1, 10.0), promoted(2, 20.0), promoted(1, 10.0)) == 2, "an old one written again"
    assert follow(promoted(2, 20.0), promoted(7, secret=None)) == 2, "unsigned"
    assert follow(promoted(2, 20.0), promoted(7, 30.0, secret=b"another secret")) == 2


def test_an_older_release_signed_without_signed_at_and_is_followed_until_a_newer_one():
    assert lifecycle_of(legacy(3), KEY)[1] == -math.inf
    assert follow(legacy(3)) == 3 and follow(legacy(3), promoted(4, 1.0)) == 4
    assert follow(promoted(4, 1.0), legacy(3)) == 4


def test_without_required_signatures_the_last_written_wins():
    assert follow(promoted(2, 20.0), promoted(1, 10.0), promoted(5, secret=None), secrets=None) == 5


def test_the_signing_clock_only_goes_forward():
    clock = SigningClock()
    first = clock.next()
    assert first == math.floor(first * 1000) / 1000  # milliseconds, never rounded up
    clock.seen(first + 3600)  # the previous instance's clock was an hour ahead of ours
    assert clock.next() == first + 3600 + 0.001 and clock.next() > first + 3600 + 0.001


def champion_of(found) -> int | None:
    return None if found is None else found[0].champion


def test_at_start_the_newest_of_equals_wins_across_blocks_and_the_last_signed_within_depth():
    old_release = [[legacy(v) for v in range(first, first + 1000)] for first in (2001, 1001, 1)]  # newest 1st
    assert champion_of(latest_of(old_release, KEY)) == 3000, "not the oldest block's last"
    replayed = [[promoted(1, 10.0)] + [b"noise"] * 1100, [promoted(5, 20.0)]]  # newest block first
    assert champion_of(latest_of(replayed, KEY)) == 5
    assert champion_of(latest_of(replayed, None)) == 1, "without signatures: the last one written"
    beyond = [[promoted(1, 10.0)], [b"noise"] * DEPTH, [promoted(5, 20.0)]]
    assert champion_of(latest_of(beyond, KEY)) == 1, "the look-back stops after DEPTH messages"
