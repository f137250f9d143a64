"""The worker rides out a broker restart: it waits, reconnects, loses and duplicates nothing.

This test runs its own broker (scripts/kafka-local on another port) so that stopping it
disturbs no other test.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest

from tests.conftest import KAFKA_LOCAL
from tests.integration.harness import (
    WorkerProcess,
    create_all_topics,
    free_port,
    predicted_ids,
    read_all,
    wait_until,
    xdist_slice,
)
from tests.integration.test_worker_exactly_once import drifting_event, steady_producer

pytestmark = pytest.mark.slow


class OwnBroker:
    """A broker of the test's own, which it may stop and start: on a port pair (broker,
    controller = port + 1) free when the test starts, between the other tests' ports
    (`free_port`: below 29000) and the ephemeral range (32768+), so that no outgoing
    connection holds it and two test sessions on one machine do not share it."""

    def __init__(self) -> None:
        pairs = xdist_slice(range(29_000, 32_700, 2))  # no two test processes pick the same pair
        self.port = next(p for p in random.sample(pairs, len(pairs)) if _free(p) and _free(p + 1))
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, command: str, *args: str) -> None:
        out = subprocess.run([sys.executable, str(KAFKA_LOCAL), command, "--port", str(self.port), *args],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def own_broker() -> Iterator[OwnBroker]:
    broker = OwnBroker()
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop", "--delete")  # its data, config and log: nothing left on a dev clone


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
