"""`--guarantee at_least_once`: no transactions, a local snapshot, then the offsets."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.harness import (
    WorkerProcess,
    create_all_topics,
    predicted_ids,
    produce,
    wait_until,
)
from tests.integration.test_worker_exactly_once import drifting_event, status

pytestmark = pytest.mark.slow


def test_kill_9_loses_nothing_and_the_state_matches_the_offsets(bootstrap, unique, tmp_path):
    prefix = unique("alo") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    args = ("--guarantee", "at_least_once", "--state-dir", str(tmp_path / "state"))
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    worker.wait_ready()
    produce(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(12_000)))

    def ids() -> Counter:
        return Counter(predicted_ids(bootstrap, prefix))

    wait_until(lambda: sum(ids().values()) > 5000, 60, "predictions before the kill")
    worker.kill()
    assert (tmp_path / "state" / f"{prefix}group.snapshot").exists(), "a snapshot was saved"
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    try:
        worker.wait_ready()
        assert '"message": "restored engine' in worker.log()
        seen = wait_until(lambda: len(c := ids()) == 12_000 and c, 120, "every event predicted")
        assert min(seen.values()) >= 1  # at least once: duplicates are allowed, losses are not
        # the restored engine resumed from its own offsets: it learned each event once
        assert status(bootstrap, prefix)["counts"]["events"] == 12_000
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
