"""Drive real `worker` processes against the real broker, and read what they wrote."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.conftest import KAFKA_LOCAL

SECRET = "test-secret"


def wait_until(condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition",
               interval_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def create_all_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    out = subprocess.run([sys.executable, "-m", "worker", "topics", "create", "--bootstrap", bootstrap,
                          "--topic-prefix", prefix, "--partitions", str(partitions)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            flush_s: float = 60) -> int:
    """Write ``records`` and wait until the broker acknowledged all of them (``flush_s``:
    how long that may take; a test that stops the broker meanwhile gives it longer)."""
    # Idempotent: a batch the broker wrote but could not acknowledge (it stopped) is
    # retried without being written twice, so the input holds each record once.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
    assert producer.flush(flush_s) == 0, f"{topic}: not acknowledged within {flush_s:g}s"
    return n


def event(i: int, *, label: Any = "auto", key: str | None = None, **features: Any) -> tuple[bytes, bytes]:
    """A valid event message: id e<i>, two numeric features, an inline label by default."""
    x = features or {"a": (i * 37 % 101) / 101, "b": (i * 53 % 97) / 97}
    body: dict[str, Any] = {"id": f"e{i}", "features": x}
    if label == "auto":
        body["label"] = x.get("a", 0) > x.get("b", 0)
    elif label is not None:
        body["label"] = label
    return (key or f"user-{i % 50}").encode(), orjson.dumps(body)


def read_all(bootstrap: str, topic: str, timeout_s: float = 30.0, isolation: str = "read_committed") -> list:
    """Every committed message of every partition of ``topic`` (``read_uncommitted``: every
    message, aborted ones too)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False, "isolation.level": isolation,
                         "enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        done: set[int] = set()
        out = []
        deadline = time.monotonic() + timeout_s
        while len(done) < len(partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                done.add(msg.partition())
                continue
            out.append(msg)
        return out
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition of ``topic`` (negative: none yet).
    Under exactly-once they move with the transactions that commit the outputs."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                                       timeout=10)]
    finally:
        consumer.close()


def json_values(messages: list) -> list[dict]:
    return [orjson.loads(m.value()) for m in messages]


_handed_out: set[int] = set()


def xdist_slice(ports: range) -> range:
    """This test process's share of ``ports`` under ``pytest -n N`` (all of it otherwise).

    A port is checked free, then handed to a process that binds it later: two test
    processes that each checked the same port would both hand it out. Disjoint shares
    make that impossible within a session (another session on the machine still takes
    its chances: the check and the random pick make it unlikely)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return ports
    index = int(worker[2:]) % count
    return ports[index::count]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, for a process to listen on soon.

    Taken from 20000-28999, below the ephemeral range (32768+ on Linux) and the outage
    tests' brokers (29000+): a port the kernel hands out (``bind(0)``) may be given to
    an outgoing connection — a Kafka client of a parallel test — before the process
    binds it. Never the same port twice in one test process, never one another test
    process of the session may hand out (`xdist_slice`)."""
    rng = random.Random()
    ports = xdist_slice(range(20_000, 29_000))
    while True:
        port = rng.choice(ports)
        if port not in _handed_out and _free(port):
            _handed_out.add(port)
            return port


def predicted_ids(bootstrap: str, prefix: str) -> list[str]:
    """The ids of the committed predictions, in topic order."""
    return [p["id"] for p in json_values(read_all(bootstrap, prefix + "predictions"))]


class WorkerProcess:
    """`python -m worker run …` in its own process group, its log in a file. A test that
    fails before it stops its workers leaves them to :func:`kill_leftover_workers`."""

    started: ClassVar[list[WorkerProcess]] = []

    def __init__(self, bootstrap: str, prefix: str, log_path: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log_start = log_path.stat().st_size if log_path.exists() else 0  # earlier runs' lines
        self.args = [sys.executable, "-m", "worker", "run", "--bootstrap", bootstrap,
                     "--topic-prefix", prefix, "--group", f"{prefix}group", "--secret", SECRET,
                     "--snapshot-interval-s", "1", *args]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        WorkerProcess.started.append(self)

    def log(self) -> str:
        """What this process logged (the file may hold earlier runs' lines too)."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        # 120 s: a start is a few seconds, but on 2 cores under `pytest -n 4` a process
        # that imports river, restores a snapshot and replays its input may be starved
        wait_until(lambda: '"message": "ready' in self.log() or self.proc.poll() is not None,
                   timeout_s, "the worker to be ready")
        assert self.proc.poll() is None, f"worker exited early:\n{self.log()[-3000:]}"

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()


def kill_leftover_workers() -> None:
    """Kill (-9) every worker a test started and did not stop: a failed test must not
    leave one running, retrying against a broker that is gone."""
    for worker in WorkerProcess.started:
        if worker.proc.poll() is None:
            worker.kill()
        worker._log.close()
    WorkerProcess.started.clear()


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
