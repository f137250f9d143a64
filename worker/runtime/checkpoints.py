"""Where the worker keeps its state between runs (ARCHITECTURE.md §4).

Exactly-once: the compacted ``worker-state`` topic, written inside the same
transactions as the predictions and the consumed offsets:

- ``progress:<seq>`` — which input ranges one transaction processed, in order, signed:
  ``{"seq": 12, "runs": [["events", 0, 100, 180], ["control", 0, 7, 7], ...], "signature": "…"}``
  (signed as commands are: :func:`worker.io.codec.sign_command`);
- ``chunk:<i>`` and ``manifest`` — a signed engine snapshot, split into chunks; the
  manifest says how many chunks and which progress records the snapshot includes
  (``after_progress``, also in the snapshot's signed meta). Progress records a snapshot
  includes are tombstoned by it, so the compacted topic stays small.

Whoever can write to the topic cannot make recovery replay input of their choosing: a
snapshot says (signed) that the progress records after it are signed, and one that is
not is refused. Snapshots written before records were signed say nothing: the records
after them are taken as they are.

Recovery loads the last snapshot and replays the ranges of the progress records after
it, in order. At-least-once: one signed file per group in a local folder, replaced by
atomic rename, holding the engine and the input offsets it reflects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from worker.core import state
from worker.core.chunks import join_chunks, split_chunks
from worker.errors import ConfigError, SnapshotError
from worker.io.codec import sign_command, verify_command
from worker.io.kafka import read_range

Run = tuple[str, int, int, int]  # topic, partition, first offset, last offset


@dataclass
class Loaded:
    """What recovery found on worker-state."""

    snapshot: bytes | None = None
    after_progress: int = 0
    runs: list[Run] = field(default_factory=list)  # to replay, in order
    next_seq: int = 1
    group: str | None = None  # the group whose snapshot it is (None: written before it was recorded)


class KafkaCheckpoints:
    """Snapshots and progress records on the compacted ``worker-state`` topic."""

    def __init__(self, topic: str, secrets: Sequence[bytes], chunk_bytes: int = 1_000_000) -> None:
        self.topic = topic
        self.secrets = secrets  # signs progress records with the first; accepts any (a rotation)
        self.chunk_bytes = chunk_bytes
        self.next_seq = 1
        self._since_snapshot: list[bytes] = []  # progress keys a next snapshot will cover
        self._chunks = 0  # chunk keys of the current snapshot

    def write_progress(self, producer: Producer, runs: list[Run]) -> None:
        seq = self.next_seq
        self.next_seq += 1
        key = f"progress:{seq}".encode()
        record = {"seq": seq, "runs": runs}
        record["signature"] = sign_command(record, self.secrets[0])
        producer.produce(self.topic, key=key, value=orjson.dumps(record))
        self._since_snapshot.append(key)

    def snapshot_meta(self) -> dict[str, Any]:
        """What the next snapshot must carry in its signed meta (Engine.snapshot's)."""
        return {"after_progress": self.next_seq - 1, "progress_signed": True}

    def write_instance(self, producer: Producer, instance: str) -> None:
        """Say which instance runs now: a fenced instance reads it to tell a takeover
        (another instance) from a transaction that timed out (itself)."""
        producer.produce(self.topic, key=b"instance", value=instance.encode())

    def write_snapshot(self, producer: Producer, data: bytes, meta: dict[str, Any]) -> None:
        chunks = split_chunks(data, self.chunk_bytes)
        for i, chunk in enumerate(chunks):
            producer.produce(self.topic, key=f"chunk:{i}".encode(), value=chunk)
        manifest = {"chunks": len(chunks), "after_progress": self.next_seq - 1, "bytes": len(data), **meta}
        producer.produce(self.topic, key=b"manifest", value=orjson.dumps(manifest))
        stale = self._since_snapshot + [f"chunk:{i}".encode() for i in range(len(chunks), self._chunks)]
        for key in stale:
            producer.produce(self.topic, key=key, value=None)  # tombstone: covered by this snapshot
        self._since_snapshot, self._chunks = [], len(chunks)

    def load(self, client: Consumer) -> Loaded:
        """Read the whole topic (``client`` from :func:`worker.io.kafka.reader`)."""
        latest: dict[bytes, bytes | None] = {}
        for msg in read_range(client, self.topic, 0, 0):
            latest[msg.key()] = msg.value()
        return self.parse(latest)

    def parse(self, latest: dict[bytes, bytes | None]) -> Loaded:
        """What the topic's last record per key says to recover. The manifest is not signed
        (the snapshot and the progress records are): a foreign or damaged record is one
        clear error, not a traceback."""
        try:
            return self._recovery({k: v for k, v in latest.items() if v is not None})
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # orjson's errors are ValueErrors
            raise SnapshotError(f"{self.topic} holds a record no worker wrote ({type(e).__name__}: {e}); "
                                "is another application writing to it?") from None

    def _recovery(self, live: dict[bytes, bytes]) -> Loaded:
        loaded = Loaded()
        progress = {int(k.split(b":")[1]): orjson.loads(v) for k, v in live.items()
                    if k.startswith(b"progress:")}
        signed = False  # the snapshot vouches that the progress records after it are signed
        if b"manifest" in live:
            manifest = orjson.loads(live[b"manifest"])
            count = manifest["chunks"]
            if not isinstance(count, int) or not 0 < count <= len(live):  # never walk a forged range
                raise SnapshotError(f"the snapshot on {self.topic} is missing chunks ({count} named)")
            parts = [live.get(f"chunk:{i}".encode()) for i in range(count)]
            if any(p is None for p in parts):
                raise SnapshotError(f"the snapshot on {self.topic} is missing chunks")
            loaded.snapshot = join_chunks(parts)
            state.verify(loaded.snapshot, self.secrets)  # its meta decides what is replayed
            meta = state.read_meta(loaded.snapshot)["meta"]
            loaded.after_progress = int(meta.get("after_progress", manifest["after_progress"]))
            signed = meta.get("progress_signed") is True
            loaded.group = manifest.get("group")
            self._chunks = count
        for seq in sorted(progress):
            key = f"progress:{seq}".encode()
            if seq > loaded.after_progress:
                record = progress[seq]
                if signed and not (verify_command(record, self.secrets) and record["seq"] == seq):
                    raise SnapshotError(f"{self.topic}: progress record {seq} is not signed with this "
                                        "worker's secret: written by someone else? (recovery would replay "
                                        "the input it names)")
                loaded.runs.extend(_run(run) for run in record["runs"])
            self._since_snapshot.append(key)
        loaded.next_seq = max([loaded.after_progress, *progress]) + 1
        self.next_seq = loaded.next_seq
        return loaded



def read_instance(client: Consumer, topic: str) -> str | None:
    """The id of the instance that started last (:meth:`KafkaCheckpoints.write_instance`),
    and nothing else: unlike :meth:`KafkaCheckpoints.load` it verifies no snapshot, so an
    instance that still has the old secret can tell that a newer one, started with a new
    secret, took over."""
    value = None
    for msg in read_range(client, topic, 0, 0):
        if msg.key() == b"instance":
            value = msg.value()
    return value.decode() if value is not None else None

def _run(run: list[Any]) -> Run:
    topic, partition, first, last = run
    whole = all(type(n) is int for n in (partition, first, last))
    if not (isinstance(topic, str) and whole and 0 <= first <= last):
        raise ValueError(f"not an input range: {run!r}")
    return topic, partition, first, last


class LocalCheckpoints:
    """At-least-once state: one signed file, replaced atomically."""

    def __init__(self, folder: Path, group: str, secrets: tuple[bytes, ...]) -> None:
        self.path = folder / f"{group}.snapshot"
        self.secrets = secrets  # signs with the first; accepts any (a rotation)

    def check_writable(self) -> None:
        """Fail at start, not at the first snapshot, when the folder cannot take one."""
        probe = self.path.with_suffix(".probe")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"state_dir {self.path.parent} cannot hold the snapshot: {e}") from None

    def save(self, snapshot: bytes, offsets: dict[tuple[str, int], int]) -> None:
        """Store an engine snapshot and the next input offsets it reflects: written to a
        temporary file, synced, renamed over the previous one, and the rename synced.
        Raises ``OSError`` (a full disk…): the previous snapshot stays."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = state.dump({"snapshot": snapshot, "offsets": offsets}, self.secrets[0])
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def load(self) -> tuple[bytes, dict[tuple[str, int], int]] | None:
        if not self.path.exists():
            return None
        saved = state.load(self.path.read_bytes(), self.secrets)
        return saved["snapshot"], saved["offsets"]
