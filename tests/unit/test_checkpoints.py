"""What recovery makes of `worker-state` records (ARCHITECTURE.md §4), read from plain
dicts: the manifest is not signed, so a foreign or damaged record must give one clear
`SnapshotError`, and no count read from it may be walked before it is checked; the
progress records after a snapshot that says so must carry this worker's signature."""

from __future__ import annotations

import orjson
import pytest

from worker.core import state
from worker.core.chunks import split_chunks
from worker.errors import SignatureError, SnapshotError
from worker.runtime.checkpoints import KafkaCheckpoints

SECRET = b"s3cret"
LEGACY = state.dump({"engine": bytes(range(256)) * 40}, SECRET)  # before progress records were signed
SIGNED = state.dump({"engine": bytes(range(256)) * 40}, SECRET,
                    meta={"after_progress": 2, "progress_signed": True})


AFTER = [["events", 0, 10, 19], ["control", 0, 4, 4]]


def checkpoints(*secrets: bytes) -> KafkaCheckpoints:
    return KafkaCheckpoints("worker-state", secrets or (SECRET,))


def records(runs: object = AFTER, snapshot: bytes = LEGACY, sign_with: bytes | None = None,
            after_progress: int = 2) -> dict[bytes, bytes | None]:
    parts = split_chunks(snapshot, 4000)
    live: dict[bytes, bytes | None] = {f"chunk:{i}".encode(): part for i, part in enumerate(parts)}
    live[b"manifest"] = orjson.dumps({"chunks": len(parts), "after_progress": after_progress})
    live[b"progress:1"] = None  # deleted: covered by the snapshot
    live[b"progress:2"] = orjson.dumps({"seq": 2, "runs": [["events", 0, 0, 9]]})  # in the snapshot
    live[b"progress:3"] = orjson.dumps({"seq": 3, "runs": runs})
    if sign_with is not None:  # as write_progress signs it
        signer = KafkaCheckpoints("worker-state", (sign_with,))
        signer.next_seq = 3

        class Capture:
            def produce(self, _topic: str, key: bytes, value: bytes) -> None:
                live[key] = value

        signer.write_progress(Capture(), runs)
    return live


def test_a_snapshot_and_the_ranges_after_it() -> None:
    loaded = checkpoints().parse(records())
    assert loaded.snapshot == LEGACY and loaded.after_progress == 2 and loaded.next_seq == 4
    assert loaded.runs == [("events", 0, 10, 19), ("control", 0, 4, 4)]


@pytest.mark.parametrize("chunks", [10**9, 2**63, 0, "3", None])
def test_a_manifest_naming_more_chunks_than_records_is_refused_at_once(chunks: object) -> None:
    live = records()
    live[b"manifest"] = orjson.dumps({"chunks": chunks, "after_progress": 2})
    with pytest.raises(SnapshotError, match="missing chunks|no worker wrote"):
        checkpoints().parse(live)


@pytest.mark.parametrize("runs", [[["events", 0, 9, 3]], [["events", 0, "1", 2]], [[1, 0, 1, 2]],
                                  [["events", 0]], "runs"])
def test_a_malformed_progress_record_is_one_clear_error(runs: object) -> None:
    with pytest.raises(SnapshotError, match="holds a record no worker wrote"):
        checkpoints().parse(records(runs=runs))


def test_after_a_snapshot_that_says_so_only_signed_progress_records_are_replayed() -> None:
    signed = checkpoints().parse(records(snapshot=SIGNED, sign_with=SECRET, after_progress=99))
    assert signed.after_progress == 2, "the snapshot's signed after_progress, not the manifest's"
    assert signed.runs == [("events", 0, 10, 19), ("control", 0, 4, 4)]
    # after a rotation, records signed with the previous secret still count
    rotated = checkpoints(b"new secret", SECRET).parse(records(snapshot=SIGNED, sign_with=SECRET))
    assert rotated.runs == signed.runs
    for forged in (records(snapshot=SIGNED), records(snapshot=SIGNED, sign_with=b"another secret")):
        with pytest.raises(SnapshotError, match="progress record 3 is not signed with this worker's secret"):
            checkpoints().parse(forged)


def test_a_snapshot_signed_with_another_secret_is_refused_before_its_meta_is_used() -> None:
    with pytest.raises(SignatureError):
        checkpoints(b"another secret").parse(records(snapshot=SIGNED, sign_with=SECRET))
