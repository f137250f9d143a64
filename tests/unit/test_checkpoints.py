"""What recovery makes of `worker-state` records (ARCHITECTURE.md §4), read from plain
dicts: the records are not signed, so a foreign or damaged one must give one clear
`SnapshotError`, and no count read from them may be walked before it is checked."""

from __future__ import annotations

import orjson
import pytest

from worker.core.chunks import split_chunks
from worker.errors import SnapshotError
from worker.runtime.checkpoints import KafkaCheckpoints

SNAPSHOT = bytes(range(256)) * 40


AFTER = [["events", 0, 10, 19], ["control", 0, 4, 4]]


def records(runs: object = AFTER) -> dict[bytes, bytes | None]:
    parts = split_chunks(SNAPSHOT, 4000)
    live: dict[bytes, bytes | None] = {f"chunk:{i}".encode(): part for i, part in enumerate(parts)}
    live[b"manifest"] = orjson.dumps({"chunks": len(parts), "after_progress": 2})
    live[b"progress:1"] = None  # deleted: covered by the snapshot
    live[b"progress:2"] = orjson.dumps({"seq": 2, "runs": [["events", 0, 0, 9]]})  # in the snapshot
    live[b"progress:3"] = orjson.dumps({"seq": 3, "runs": runs})
    return live


def test_a_snapshot_and_the_ranges_after_it() -> None:
    loaded = KafkaCheckpoints("worker-state").parse(records())
    assert loaded.snapshot == SNAPSHOT and loaded.after_progress == 2 and loaded.next_seq == 4
    assert loaded.runs == [("events", 0, 10, 19), ("control", 0, 4, 4)]


@pytest.mark.parametrize("chunks", [10**9, 2**63, 0, "3", None])
def test_a_manifest_naming_more_chunks_than_records_is_refused_at_once(chunks: object) -> None:
    live = records()
    live[b"manifest"] = orjson.dumps({"chunks": chunks, "after_progress": 2})
    with pytest.raises(SnapshotError, match="missing chunks|no worker wrote"):
        KafkaCheckpoints("worker-state").parse(live)


@pytest.mark.parametrize("runs", [[["events", 0, 9, 3]], [["events", 0, "1", 2]], [[1, 0, 1, 2]],
                                  [["events", 0]], "runs"])
def test_a_malformed_progress_record_is_one_clear_error(runs: object) -> None:
    with pytest.raises(SnapshotError, match="holds a record no worker wrote"):
        KafkaCheckpoints("worker-state").parse(records(runs=runs))
