"""The worker rides out a broker restart: it waits, reconnects, loses and duplicates nothing.

This test runs its own broker (scripts/kafka-local on another port) so that stopping it
disturbs no other test.
"""

from __future__ import annotations

import signal
import time
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
    produce,
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


def test_a_stop_signal_while_the_broker_is_down_exits_within_seconds_and_loses_nothing(
        own_broker, unique, tmp_path):
    """A supervisor stops a worker whose broker is gone (for good, as far as it knows): one
    SIGTERM ends it within seconds, exit 1 with a line that says the last interval was not
    committed. Its input is served by the next start, once, as if nothing had happened."""
    bootstrap, prefix = own_broker.bootstrap, unique("outage-stop") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log")
    worker.wait_ready()
    total = 8_000
    sender = steady_producer(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(total)),
                             rate_per_s=2000)
    wait_until(lambda: len(predicted_ids(bootstrap, prefix)) > 2000, 60, "predictions before the outage")
    own_broker.run("stop")
    wait_until(lambda: "waiting for the broker" in worker.log(), 60, "the worker to report the outage")
    # The outage goes on (this sleep is the scenario, not a wait for something): past 15 s
    # the worker may have given up a blocked librdkafka call and be recovering, whose
    # calls block for 30 s each unless it asks the broker first.
    time.sleep(20)
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(60)
    took = time.monotonic() - began
    assert code == 1, worker.log()[-3000:]
    assert took < 15, f"one SIGTERM took {took:.1f}s to stop the worker"
    last = worker.log().strip().splitlines()[-1]
    assert last.startswith("worker: stopped without committing") and "Nothing is lost" in last, last

    own_broker.run("start")
    sender.finish(300)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log")
    try:
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) >= total, 180, f"{total} predictions",
                   interval_s=1)
        ids = Counter(predicted_ids(bootstrap, prefix))
        sent = Counter(orjson.loads(m.value())["id"] for m in read_all(bootstrap, prefix + "events"))
        assert len(sent) == total and max(sent.values()) == 1, "the test's own input has duplicates"
        assert ids == sent, "nothing lost, nothing duplicated"
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_trainer_and_a_scorer_stopped_while_the_broker_is_down_exit_without_waiting_for_it(
        own_broker, unique, tmp_path):
    bootstrap, prefix = own_broker.bootstrap, unique("outage-scale-stop") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    trainer = WorkerProcess(bootstrap, prefix, tmp_path / "trainer.log", "--role", "trainer",
                            "--warmup-labels", "200")
    scorer = WorkerProcess(bootstrap, prefix, tmp_path / "scorer.log", "--role", "scorer",
                           "--scorer-id", "s1")
    trainer.wait_ready()
    produce(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(20_000)))
    scorer.wait_ready()
    wait_until(lambda: len(predicted_ids(bootstrap, prefix)) > 1000, 60, "predictions before the outage")
    own_broker.run("stop")
    for process in (scorer, trainer):
        wait_until(lambda p=process: "waiting for the broker" in p.log(), 60, "the outage in the log")
    began = time.monotonic()
    for process in (scorer, trainer):
        process.proc.send_signal(signal.SIGTERM)
    codes = [process.proc.wait(90) for process in (scorer, trainer)]
    took = time.monotonic() - began
    # the scorer may be inside a commit the broker does not answer (librdkafka's
    # send_offsets_to_transaction, bounded at 15 s here), or have nothing to commit
    assert took < 40, f"one SIGTERM took {took:.1f}s to stop them"
    for process, code in zip((scorer, trainer), codes, strict=True):
        last = process.log().strip().splitlines()[-1]
        if code == 0:  # what it served since its last commit was committed: nothing left
            assert process is scorer and '"stopped cleanly"' in last, last
        else:
            assert code == 1 and last.startswith("worker: stopped without committing the last interval"), last


def test_at_least_once_a_stop_signal_while_the_broker_is_down_exits_within_seconds(own_broker, unique,
                                                                                    tmp_path):
    """The same with `--guarantee at_least_once`: no transaction, but outputs that wait
    for the broker before the local snapshot; a stop does not wait them out."""
    bootstrap, prefix = own_broker.bootstrap, unique("outage-alo") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", "--guarantee", "at_least_once",
                           "--state-dir", str(tmp_path / "state"))
    worker.wait_ready()
    # a backlog: the worker goes on with what it has fetched once the broker is gone, and
    # its predictions wait for the broker before each snapshot (every second here)
    produce(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(60_000)))
    wait_until(lambda: len(predicted_ids(bootstrap, prefix)) > 2000, 60, "predictions before the outage")
    own_broker.run("stop")
    wait_until(lambda: "waiting for the broker" in worker.log(), 60, "the worker to report the outage")
    time.sleep(5)  # the outage goes on (the scenario, not a wait for something)
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(60)
    took = time.monotonic() - began
    assert code == 1, worker.log()[-3000:]
    assert took < 15, f"one SIGTERM took {took:.1f}s to stop the worker"
    assert worker.log().strip().splitlines()[-1].startswith("worker: stopped without committing"), \
        worker.log()[-3000:]
