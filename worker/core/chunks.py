"""Split a big snapshot into message-sized chunks, and put it back together.

A Kafka message has a maximum size (``message.max.bytes``, 1 MiB by default) and a
trained forest snapshot easily exceeds it, so the edge stores a snapshot as several
messages in one transaction (ARCHITECTURE.md §4). Each chunk carries a small binary
header — snapshot id, index, count — so the reader can group chunks, detect a missing
or foreign one, and refuse to load half a snapshot.

The snapshot id is the first 16 bytes of the SHA-256 of the whole snapshot: it is
deterministic (same snapshot, same chunks) and lets :func:`join_chunks` check the
reassembled bytes. It is an integrity check only; authenticity is the job of the
HMAC inside the snapshot (:mod:`worker.core.state`).

>>> from worker.core.chunks import split_chunks, join_chunks, chunk_info
>>> parts = split_chunks(b"x" * 100, size=64)
>>> len(parts), max(len(p) for p in parts) <= 64
(3, True)
>>> chunk_info(parts[2]).index, chunk_info(parts[2]).count
(2, 3)
>>> join_chunks(parts[::-1]) == b"x" * 100  # any order
True
>>> join_chunks(parts[:2])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
worker.errors.SnapshotError: missing chunk(s) [2] of 3 for snapshot ...

"""

from __future__ import annotations

import hashlib
import itertools
import struct
from typing import NamedTuple

from worker.errors import ConfigError, SnapshotError

__all__ = ["HEADER_SIZE", "ChunkInfo", "chunk_info", "join_chunks", "split_chunks"]

_MAGIC = b"WKCH"
_VERSION = 1
_HEADER = struct.Struct(">4sB16sII")  # magic, version, snapshot id, index, count
HEADER_SIZE = _HEADER.size  # 29 bytes


class ChunkInfo(NamedTuple):
    snapshot_id: str  # 32 hex chars
    index: int
    count: int


def _snapshot_id(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def split_chunks(data: bytes, size: int) -> list[bytes]:
    """Cut ``data`` into chunks of at most ``size`` bytes each, header included.

    Always at least one chunk (an empty snapshot is one chunk with no body).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= HEADER_SIZE:
        raise ConfigError(f"chunk size must be an integer > {HEADER_SIZE}, got {size!r}")
    data = bytes(data)
    body = size - HEADER_SIZE
    count = max(1, -(-len(data) // body))
    if count > 0xFFFFFFFF:
        raise ConfigError("too many chunks: use a larger chunk size")
    sid = _snapshot_id(data)
    return [
        _HEADER.pack(_MAGIC, _VERSION, sid, i, count) + data[i * body : (i + 1) * body]
        for i in range(count)
    ]


def chunk_info(part: bytes) -> ChunkInfo:
    """Read a chunk's header: which snapshot it belongs to, and where."""
    if len(part) < HEADER_SIZE:
        raise SnapshotError("not a snapshot chunk: too short")
    magic, version, sid, index, count = _HEADER.unpack_from(part)
    if magic != _MAGIC:
        raise SnapshotError("not a snapshot chunk: bad magic")
    if version != _VERSION:
        raise SnapshotError(f"unsupported snapshot chunk version {version}")
    if count == 0 or index >= count:
        raise SnapshotError(f"corrupt snapshot chunk: index {index} of {count}")
    return ChunkInfo(sid.hex(), index, count)


def join_chunks(parts: list[bytes]) -> bytes:
    """Reassemble the chunks of one snapshot, given in any order.

    An exact duplicate chunk is tolerated (a re-read); a missing chunk, chunks of
    different snapshots, or bytes that do not hash to the snapshot id raise
    `SnapshotError`.
    """
    if not parts:
        raise SnapshotError("no snapshot chunks to join")
    bodies: dict[int, bytes] = {}
    first = chunk_info(parts[0])
    for part in parts:
        info = chunk_info(part)
        if info.snapshot_id != first.snapshot_id:
            raise SnapshotError(
                f"chunks of different snapshots: {first.snapshot_id} and {info.snapshot_id}"
            )
        if info.count != first.count:
            raise SnapshotError(f"corrupt snapshot chunks: counts {first.count} and {info.count}")
        body = bytes(part[HEADER_SIZE:])
        if bodies.setdefault(info.index, body) != body:
            raise SnapshotError(f"two different chunks with index {info.index}")
    if len(bodies) < first.count:  # chunk_info checked each index < count: only some can be missing
        # the count is not signed: look for the first missing ones, never walk range(count)
        missing = list(itertools.islice((i for i in range(first.count) if i not in bodies), 10))
        more = "..." if first.count - len(bodies) > 10 else ""
        raise SnapshotError(f"missing chunk(s) {missing}{more} of {first.count} for snapshot "
                            f"{first.snapshot_id}")
    data = b"".join(bodies[i] for i in range(first.count))
    if _snapshot_id(data).hex() != first.snapshot_id:
        raise SnapshotError(f"corrupt snapshot {first.snapshot_id}: chunks do not match its id")
    return data
