"""The ``models`` topic: every champion, signed, by version (ARCHITECTURE.md §2).

A version is published when it starts to serve as a frozen champion — version 1 at the
end of its warm-up, every other one when it is promoted — so the topic holds each model
that was ever released, as it was when it started to serve. It stays readable after the
worker dropped the version from memory, for an audit, a notebook or a batch job
(``worker models list`` / ``worker models export``).

A trainer (``--role trainer``) also publishes the versions that serve while they still
learn, for its scorers to serve (:meth:`Engine.serving_learners`): version 1 during its
warm-up, the champion with ``champion_learns = true``, the challenger while a traffic
split serves it. Those publications carry ``"learning": true`` and are replaced by newer
ones as the model learns (at most once per snapshot interval); a version that stops
learning as a champion is published once more, for good.

Messages (keys are UTF-8; the topic is compacted, so a version published again — after
a restart — replaces itself):

- ``v<version>/<i>``: chunk ``i`` of the signed model (:mod:`worker.core.state` inside
  :mod:`worker.core.chunks`);
- ``v<version>``: the manifest, JSON: its lineage, the number of chunks and bytes, and
  when (labelled-event count) it was published. It is written after its chunks, in the
  same transaction when the worker runs exactly once.

Compaction alone would keep every version ever published (a drifting stream can see
thousands of promotions a day, and a grown tree weighs megabytes), so the worker
prunes: after each publication it writes tombstones (``None`` values) for the manifest
and chunks of the versions beyond the ``models_retain`` most recent ones
(:func:`versions_to_prune`, :func:`tombstones`), never the serving champion.

>>> from worker.core.registry import ModelVersion
>>> mv = ModelVersion(3, "linear_model.LogisticRegression", 2, "promoted", 700, None, {"w": 1.0})
>>> messages = model_messages(mv, b"s3cret", chunk_bytes=64, published_labelled=900)
>>> [key for key, _ in messages][-1], len(messages) > 2
(b'v3', True)
>>> catalog = Catalog()
>>> for key, value in messages:
...     catalog.add(key, value)
>>> catalog.manifests()[0]["published_labelled"], catalog.load(3, b"s3cret")
(900, {'w': 1.0})
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import orjson

from worker.core import state
from worker.core.chunks import join_chunks, split_chunks
from worker.core.registry import ModelVersion
from worker.errors import SnapshotError
from worker.io.kafka import read_range, reader

# A manifest is not signed (its model is): one naming more chunks than any real model
# has (1 MB each: 100 GB) is not a worker's, and must not make one write a tombstone per chunk.
MAX_CHUNKS = 100_000


def model_messages(mv: ModelVersion, secret: bytes, *, chunk_bytes: int,
                   published_labelled: int, learning: bool = False) -> list[tuple[bytes, bytes]]:
    """The (key, value) messages that publish ``mv``: its chunks, then its manifest.
    ``learning``: a model that serves while it learns, to be published again."""
    lineage = {k: v for k, v in mv.lineage().items() if k not in ("roles", "retained")}
    blob = state.dump(mv.model, secret, meta={"version": mv.version, "spec": mv.spec})
    chunks = split_chunks(blob, chunk_bytes)
    prefix = f"v{mv.version}"
    manifest = {**lineage, "published_labelled": published_labelled,
                "chunks": len(chunks), "bytes": len(blob), **({"learning": True} if learning else {})}
    return [*((f"{prefix}/{i}".encode(), chunk) for i, chunk in enumerate(chunks)),
            (prefix.encode(), orjson.dumps(manifest))]


class Catalog:
    """What a read of the ``models`` topic found: the latest value of every key."""

    def __init__(self, messages: Iterable[tuple[bytes | None, bytes | None]] = ()) -> None:
        self._latest: dict[bytes, bytes | None] = {}
        for key, value in messages:
            self.add(key, value)

    def add(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None:
            self._latest[key] = value

    def manifests(self) -> list[dict[str, Any]]:
        """Every published version's manifest, by version (a malformed one, or one under
        another version's key, is skipped: not written by a worker, it must not stop one)."""
        found = [(_version_of(key), _parse_manifest(value)) for key, value in self._latest.items()
                 if value is not None and b"/" not in key and key.startswith(b"v")]
        ours = (m for v, m in found if m is not None and m["version"] == v)  # v3's manifest names v3
        return sorted(ours, key=lambda m: m["version"])

    def published(self, version: int) -> bool:
        return self._latest.get(f"v{version}".encode()) is not None

    def learning(self) -> set[int]:
        """The versions whose latest publication is of a model that still learns (written
        as ``"warmup"`` for version 1 by earlier releases)."""
        return {m["version"] for m in self.manifests() if m.get("learning") or m.get("warmup")}

    def manifest(self, version: int) -> bytes | None:
        """The raw manifest of ``version``'s latest publication (a new one means a new model)."""
        return self._latest.get(f"v{version}".encode())

    def pruned(self, version: int) -> bool:
        """Whether ``version`` was published and then pruned (its manifest's tombstone is
        still on the topic: compaction removes tombstones after ``delete.retention.ms``)."""
        key = f"v{version}".encode()
        return key in self._latest and self._latest[key] is None

    def keep_chunks_of(self, served: Collection[int]) -> None:
        """Forget the models of versions older than the newest of ``served`` but those in
        ``served`` (their manifests stay, but for the tombstones of pruned ones): a reader
        that follows the topic keeps its memory to the versions it serves and those that
        may come next."""
        newest = max(served)
        for key in [k for k, v in self._latest.items() if b"/" in k or v is None]:
            if (version := _version_of(key)) < newest and version not in served:
                del self._latest[key]

    def has_chunks(self, version: int) -> bool:
        """Whether every chunk ``version``'s manifest names is here (a follower forgets the
        chunks of versions it does not serve: :meth:`keep_chunks_of`)."""
        manifest = self._parsed(version)
        return manifest is not None and self._chunks(version, manifest["chunks"]) is not None

    def _parsed(self, version: int) -> dict[str, Any] | None:
        """``version``'s manifest, when there is one a worker wrote."""
        raw = self._latest.get(f"v{version}".encode())
        manifest = None if raw is None else _parse_manifest(raw)
        return manifest if manifest is not None and manifest["version"] == version else None

    def _chunks(self, version: int, count: int) -> list[bytes] | None:
        """The ``count`` chunks of ``version``, or None from the first missing one on
        (however many a manifest says: a foreign one may say a billion)."""
        parts = []
        for i in range(count):
            if (part := self._latest.get(f"v{version}/{i}".encode())) is None:
                return None
            parts.append(part)
        return parts

    def load(self, version: int, secret: bytes | Sequence[bytes]) -> Any:
        """The model of ``version``; a missing, incomplete, tampered or foreign one
        raises :class:`~worker.errors.SnapshotError` before anything is unpickled."""
        manifest = self._latest.get(f"v{version}".encode())
        if manifest is None and self.pruned(version):
            raise SnapshotError(f"version {version} was pruned from the models topic (the worker keeps "
                                "the most recent ones: models_retain)")
        if manifest is None:
            known = ", ".join(str(m["version"]) for m in self.manifests()) or "none"
            raise SnapshotError(f"version {version} is not on the models topic (published: {known})")
        parsed = self._parsed(version)
        if parsed is None:
            raise SnapshotError(f"version {version} on the models topic has a malformed manifest")
        parts = self._chunks(version, parsed["chunks"])
        if parts is None:
            raise SnapshotError(f"version {version} on the models topic is missing chunks")
        return state.load(join_chunks(parts), secret)


def versions_to_prune(on_topic: Iterable[int], keep: int, champion: int) -> list[int]:
    """The versions whose models leave the topic: all but the ``keep`` highest (the most
    recently promoted), and never the ``champion`` (after a rollback it may be an old
    one). ``keep = 0`` keeps everything.

    >>> versions_to_prune([1, 2, 3, 4, 5], keep=2, champion=2)
    [1, 3]
    >>> versions_to_prune([1, 2], keep=0, champion=2)
    []
    """
    if keep == 0:
        return []
    older = sorted(on_topic)[:-keep]
    return [v for v in older if v != champion]


def tombstones(version: int, chunks: int) -> list[tuple[bytes, None]]:
    """The messages that prune ``version``: its manifest first, so that no reader ever
    sees a manifest whose chunks are gone, then its ``chunks`` chunks."""
    return [(f"v{version}".encode(), None), *((f"v{version}/{i}".encode(), None) for i in range(chunks))]


def _parse_manifest(value: bytes) -> dict[str, Any] | None:
    """The manifest as a dict, or None when it is not one a worker writes."""
    try:
        manifest = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(manifest, dict):
        return None
    version, chunks = manifest.get("version"), manifest.get("chunks")
    ints = all(isinstance(n, int) and not isinstance(n, bool) for n in (version, chunks))
    return manifest if ints and 1 <= chunks <= MAX_CHUNKS else None


def _version_of(key: bytes) -> int:
    try:
        return int(key.split(b"/", 1)[0][1:])
    except ValueError:
        return -1  # not one of ours


def read_catalog(reader: Any, topic: str, *, chunks_of: Collection[int] | None = None) -> Catalog:
    """Read the whole ``models`` topic (``reader`` from :func:`worker.io.kafka.reader`,
    which reads committed messages only: never half a transaction). Every manifest is
    kept; with ``chunks_of``, only the model bytes of those versions (none for an empty
    collection), so that memory holds one model, not all that are retained."""
    messages = ((msg.key(), msg.value()) for msg in read_range(reader, topic, 0, 0))
    if chunks_of is not None:
        messages = ((key, value) for key, value in messages
                    if key is not None and (b"/" not in key or _version_of(key) in chunks_of))
    return Catalog(messages)


def read_models(config: dict[str, Any], topic: str, *, chunks_of: Collection[int] | None = None) -> Catalog:
    """:func:`read_catalog` with a reader of its own (``config``: a consumer's, with a
    ``group.id``)."""
    client = reader(config)
    try:
        return read_catalog(client, topic, chunks_of=chunks_of)
    finally:
        client.close()
