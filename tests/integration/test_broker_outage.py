"""The worker rides out a broker restart: it waits, reconnects, loses and duplicates nothing.

This test runs its own broker (scripts/kafka-local on another port) so that stopping it
disturbs no other test.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import Counter

import orjson
import pytest

from tests.integration.harness import (
    WorkerProcess,
    create_all_topics,
    free_port,
    predicted_ids,
    read_all,
    wait_until,
)
from tests.integration.test_worker_exactly_once import drifting_event, steady_producer

pytestmark = pytest.mark.slow


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_worker_survives_a_broker_restart(own_broker, unique, tmp_path):
    bootstrap, prefix = own_broker.bootstrap, unique("outage") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    port = free_port()
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", "--metrics-port", str(port))
    worker.wait_ready()
    assert readyz(port) == 200
    total = 16_000
    sender = steady_producer(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(total)),
                             rate_per_s=2000)

    def served() -> int:
        return len(predicted_ids(bootstrap, prefix))

    wait_until(lambda: served() > 3000, 60, "predictions before the outage")
    own_broker.run("stop")
    wait_until(lambda: "waiting for the broker" in worker.log(), 60, "the worker to report the outage")
    wait_until(lambda: readyz(port) == 503, 60, "/readyz to say the worker is not ready")
    assert worker.proc.poll() is None, "the worker must wait for the broker, not exit"
    own_broker.run("start")
    sender.finish(300)
    try:
        wait_until(lambda: served() >= total, 180, f"{total} predictions after the restart", interval_s=1)
        ids = Counter(predicted_ids(bootstrap, prefix))
        # one prediction per input message (the input itself was written once: see produce)
        sent = Counter(orjson.loads(m.value())["id"] for m in read_all(bootstrap, prefix + "events"))
        assert len(sent) == total and max(sent.values()) == 1, "the test's own input has duplicates"
        assert ids == sent, "nothing lost, nothing duplicated"
        wait_until(lambda: readyz(port) == 200, 60, "/readyz to be ready again")
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_trainer_and_a_scorer_survive_a_broker_restart(own_broker, unique, tmp_path):
    """Scale-out (ARCHITECTURE.md §5) under the same outage: the scorer waits for the
    broker, then goes on from its last commit; every event is predicted once."""
    bootstrap, prefix = own_broker.bootstrap, unique("outage-scale") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    trainer = WorkerProcess(bootstrap, prefix, tmp_path / "trainer.log", "--role", "trainer",
                            "--warmup-labels", "200")
    scorer = WorkerProcess(bootstrap, prefix, tmp_path / "scorer.log", "--role", "scorer",
                           "--scorer-id", "s1")
    try:
        trainer.wait_ready()
        total = 16_000
        sender = steady_producer(bootstrap, prefix + "events",
                                 (drifting_event(i, 10**9) for i in range(total)), rate_per_s=2000)
        scorer.wait_ready()  # once the trainer's warm-up is over

        def served() -> int:
            return len(predicted_ids(bootstrap, prefix))

        wait_until(lambda: served() > 3000, 60, "predictions before the outage")
        own_broker.run("stop")
        wait_until(lambda: "waiting for the broker" in scorer.log(), 60, "the scorer to report the outage")
        assert scorer.proc.poll() is None, "the scorer must wait for the broker, not exit"
        own_broker.run("start")
        sender.finish(300)
        wait_until(lambda: served() >= total, 180, f"{total} predictions after the restart", interval_s=1)
        ids = Counter(predicted_ids(bootstrap, prefix))
        sent = Counter(orjson.loads(m.value())["id"] for m in read_all(bootstrap, prefix + "events"))
        assert len(sent) == total and max(sent.values()) == 1, "the test's own input has duplicates"
        assert ids == sent, "nothing lost, nothing duplicated"
    finally:
        codes = [p.stop() for p in (scorer, trainer)]
    assert codes == [0, 0], scorer.log()[-3000:] + trainer.log()[-3000:]
