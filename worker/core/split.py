"""Stable traffic split for gray release: which entities the challenger serves.

``set_split P`` serves the challenger to P % of *entities* (ARCHITECTURE.md §3), so
the choice must be sticky: the same key gets the same arm on every event, in every
process (scorers scale out, workers restart) and after every restart. Python's
``hash()`` is salted per process (``PYTHONHASHSEED``), so it would reshuffle users on
each restart; a cryptographic hash of the UTF-8 key is the same everywhere.

Keys are mapped to one of 10 000 buckets (a resolution of 0.01 %), and bucket ``b``
is served by the challenger when ``b < P × 100``. Raising P therefore only *adds*
entities to the challenger — one served at 10 % is still served at 20 % — so a
gradual rollout never flips a user back and forth.

Changing the hash would move every entity to a random arm: the function and its
output are part of the contract (a test pins a few values).

>>> from worker.core.split import bucket, serves_challenger
>>> bucket("user-42")
598
>>> serves_challenger("user-42", 5.0, fallback_id="evt-1")  # 598 >= 500
False
>>> serves_challenger("user-42", 6.0, fallback_id="evt-1")  # 598 < 600
True
>>> serves_challenger(None, 100.0, fallback_id="evt-1")  # no key: split by event id
True

"""

from __future__ import annotations

import hashlib
import math

from worker.errors import ConfigError

__all__ = ["BUCKETS", "bucket", "serves_challenger"]

BUCKETS = 10_000


def bucket(key: str) -> int:
    """The key's bucket in ``[0, 10000)``: BLAKE2b-64 of its UTF-8 bytes, mod 10 000.

    The modulo bias of a 64-bit hash over 10 000 buckets is below 1e-15: negligible.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def serves_challenger(key: str | None, percent: float, fallback_id: str) -> bool:
    """Whether the challenger serves this entity at a split of ``percent`` %.

    Events without a key (or with an empty one) are split by ``fallback_id`` (the event
    id): still deterministic, but per event instead of per entity. ``percent`` is
    rounded to the bucket resolution (0.01 %) so that float noise such as
    ``1.1 * 100 == 110.00000000000001`` does not add a bucket.
    """
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not math.isfinite(percent)
        or not 0 <= percent <= 100
    ):
        raise ConfigError(f"split percent must be a number in [0, 100], got {percent!r}")
    return bucket(key or fallback_id) < round(percent * (BUCKETS // 100))
