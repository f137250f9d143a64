"""`--commit-interval-events` and `--snapshot-interval-events` (ARCHITECTURE.md §4: a
commit "every 100 ms, or N events", a snapshot "every 10 s, or N events"), read off the
records the worker leaves on `worker-state`."""

from __future__ import annotations

import orjson

from tests.integration.harness import create_all_topics, event, predicted_ids, produce, read_all, wait_until
from tests.integration.test_worker_io import running


def test_transactions_and_snapshots_every_n_events(bootstrap, unique, tmp_path):
    prefix = unique("intervals") + "."
    create_all_topics(bootstrap, prefix, 1)
    produce(bootstrap, prefix + "events", [event(i) for i in range(1000)])  # a backlog at start
    # by time alone: one transaction per 30 s, one snapshot per hour
    with running(bootstrap, prefix, tmp_path / "worker.log", "--commit-interval-ms", "30000",
                 "--snapshot-interval-s", "3600", "--commit-interval-events", "100",
                 "--snapshot-interval-events", "300"):
        # were the event counts ignored, the 30 s timer would commit all 1000 in one transaction
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 1000, 120, "1000 predictions committed")

    records = read_all(bootstrap, prefix + "worker-state")
    progress = [orjson.loads(m.value()) for m in records
                if m.key().startswith(b"progress:") and m.value() is not None]
    # input messages per transaction (control, read back by its own consumer, is not counted)
    events = prefix + "events"
    sizes = [sum(b - a + 1 for topic, _, a, b in p["runs"] if topic == events) for p in progress]
    assert progress and max(sizes) <= 100, sizes
    snapshots = [orjson.loads(m.value())["events"] for m in records if m.key() == b"manifest"]
    # at start, after every 300 events (the transactions of 100 land on it exactly), at the stop
    assert snapshots == [0, 300, 600, 900, 1000], snapshots
