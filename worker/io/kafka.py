"""Thin helpers around confluent-kafka: clients, bounded reads, error classification.

Everything that knows librdkafka's quirks lives here, so the run loop reads as the
design does (ARCHITECTURE.md §4).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.errors import ConfigError, WorkerError

log = logging.getLogger("worker.kafka")

READ_TIMEOUT_S = 30.0
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                    KafkaError._FATAL})


class _OncePer(logging.Filter):
    """librdkafka repeats a failing connect every ~50 ms: let one line per kind through
    every ``interval_s`` seconds. A kind is the line with its numbers left out ("… failed
    (after 3ms in state CONNECT)" repeats with other numbers); two different lines are two
    kinds, even when they share a format (librdkafka's are all ``"%s [%s] %s"``).

    >>> once = _OncePer(5.0)
    >>> line = lambda text: logging.LogRecord("k", logging.WARNING, "", 0, "%s", (text,), None)
    >>> [once.filter(line(t)) for t in ("connect failed after 1ms", "connect failed after 7ms",
    ...                                 "limit of topic a", "limit of topic b")]
    [True, False, True, True]
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = f"{record.levelno}:{_DIGITS.sub('', record.getMessage())[:200]}"
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.interval_s:
            return False
        self._last[kind] = now
        return True


_DIGITS = re.compile(r"\d+")
log.addFilter(_OncePer(5.0))


UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE})


def log_client_error(error: KafkaError) -> None:
    """Client-level errors (not tied to a message): say plainly that we wait."""
    if error.code() in UNREACHABLE:
        log.warning("Kafka broker unreachable (%s): waiting for the broker, retrying", error.str())
    else:
        log.warning("Kafka client error: %s", error.str())


def consumer(config: dict[str, Any]) -> Consumer:
    return _client(Consumer, "consumer", config)


def producer(config: dict[str, Any]) -> Producer:
    return _client(Producer, "producer", config)


def _client(cls: type, kind: str, config: dict[str, Any]) -> Any:
    """A client of ``config``, or one ConfigError line naming what it refused: librdkafka's
    own error, or the Python client's for the settings it reads itself."""
    try:
        return cls({"logger": log, "error_cb": log_client_error, **config})
    except KafkaException as e:
        raise ConfigError(f"invalid Kafka {kind} setting: {e.args[0].str()}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid Kafka {kind} setting: {e}") from None


def reader(config: dict[str, Any]) -> Consumer:
    """A consumer for bounded reads (recovery): read_committed, reports partition EOF."""
    return consumer({**config, "enable.partition.eof": True, "enable.auto.commit": False,
                     "fetch.wait.max.ms": 20})


def partitions_of(client: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    info = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise ConfigError(f"topic {topic!r} does not exist (deleted while running? create it again with "
                          "`worker topics create`, then restart)")
    return sorted(info.partitions)


def read_range(client: Consumer, topic: str, partition: int, first: int,
               last: int | None = None) -> Iterator[Message]:
    """Messages of one partition from ``first`` to ``last`` (inclusive; None: to the end).

    ``client`` must come from :func:`reader`. A read_committed consumer skips aborted
    messages and transaction markers, so the range may hold fewer messages than its
    span; the read stops after ``last`` or at the partition's end, whichever is first.
    """
    client.assign([TopicPartition(topic, partition, first)])
    try:
        while True:
            msg = client.poll(READ_TIMEOUT_S)
            if msg is None:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"reading {topic}[{partition}]"))
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return
                raise KafkaException(msg.error())
            if last is not None and msg.offset() > last:
                return
            yield msg
            if last is not None and msg.offset() >= last:
                return
    finally:
        client.unassign()


def bounds(client: Consumer, topic: str) -> tuple[int, int]:
    """(the oldest offset retention kept, the end) of a one-partition topic; for a
    read_committed ``client`` (:func:`reader`) the end is the last stable offset."""
    return client.get_watermark_offsets(TopicPartition(topic, 0), timeout=READ_TIMEOUT_S, cached=False)


def read_backwards(client: Consumer, topic: str, block: int = 1000) -> Iterator[list[Message]]:
    """The committed messages of a one-partition topic, ``block`` at a time from its end
    back to the oldest one retention kept (each block in log order): what is looked for
    near the end of a long log costs only its tail."""
    low, end = bounds(client, topic)
    last = end - 1
    while last >= low:
        first = max(low, last - block + 1)
        yield list(read_range(client, topic, 0, first, last))
        last = first - 1


def read_spans(client: Consumer, spans: dict[tuple[str, int], tuple[int, int]]) -> dict[Any, dict]:
    """Read each partition's span ``(first, last)`` at once: ``{(topic, partition): {offset: msg}}``.

    Recovery replays many short ranges in a recorded order; fetching every partition
    once and then walking the ranges costs one fetch instead of one per range.
    """
    out: dict[tuple[str, int], dict[int, Message]] = {key: {} for key in spans}
    pending = set(spans)
    client.assign([TopicPartition(t, p, first) for (t, p), (first, _last) in spans.items()])
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while pending:
            # consume() waits for the full count or the timeout: keep the timeout short
            messages = client.consume(num_messages=10_000, timeout=0.1)
            if not messages and time.monotonic() > deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"reading {sorted(pending)}"))
            if messages:
                deadline = time.monotonic() + READ_TIMEOUT_S
            for msg in messages:
                key = (msg.topic(), msg.partition())
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(msg.error())
                    pending.discard(key)
                    continue
                last = spans[key][1]
                if msg.offset() <= last:
                    out[key][msg.offset()] = msg
                if msg.offset() >= last:
                    pending.discard(key)
    finally:
        client.unassign()
    return out


def committed(client: Consumer, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
    """The group's committed offsets (only the partitions that have one)."""
    return {(tp.topic, tp.partition): tp.offset
            for tp in client.committed(partitions, timeout=10.0) if tp.offset >= 0}


def unstable_partitions(config: dict[str, Any], partitions: list[TopicPartition],
                        timeout_s: float = 10.0) -> list[tuple[str, int, int, int]]:
    """(topic, partition, last stable offset, high watermark) of each partition where an
    open transaction holds read_committed readers back (LSO < HWM).

    A read_committed client's watermark query answers the LSO, a read_uncommitted one's
    the high watermark."""
    levels = ("read_committed", "read_uncommitted")
    clients = [consumer({**config, "isolation.level": level}) for level in levels]
    try:
        out = []
        for tp in partitions:
            lso, hwm = (c.get_watermark_offsets(tp, timeout=timeout_s, cached=False)[1] for c in clients)
            if lso < hwm:
                out.append((tp.topic, tp.partition, lso, hwm))
        return out
    finally:
        for client in clients:
            client.close()


def answers(client: Consumer, topic: str, timeout_s: float = 2.0) -> bool:
    """Does the cluster answer a metadata request for ``topic`` within ``timeout_s``? A
    recovery asks first: its own calls (``init_transactions``) would block for their
    whole timeout while the broker is away, deaf to a stop signal. So does a stop before
    it gives up its last commit."""
    try:
        client.list_topics(topic, timeout=timeout_s)
        return True
    except KafkaException as e:
        log.warning("Kafka not answering a metadata request (%s): waiting for the broker", e.args[0].str())
        return False


def retrying(call: Callable[[float], Any], timeout_s: float, check: Callable[[], None] | None = None) -> None:
    """``call(timeout_s)`` (a transactional call such as ``commit_transaction``), again
    while librdkafka says its error is retriable: the broker is away for a while. Before
    each retry ``check()`` may raise when waiting is in vain (a deleted topic)."""
    while True:
        try:
            call(timeout_s)
            return
        except KafkaException as e:
            if not e.args[0].retriable():
                raise
            if check is not None:
                check()
            log.warning("broker not answering (%s); retrying %s", e.args[0].str(), call.__name__)


#: Errors that say a topic or partition is gone (deleted while running, if the cluster agrees).
UNKNOWN_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                           KafkaError._UNKNOWN_PARTITION})

STUCK = KafkaError._TIMED_OUT_QUEUE  # our code for "a call outlived its timeout"


def call_bounded(call: Callable[..., Any], *args: Any, grace_s: float = 5.0) -> Any:
    """Run ``call(*args, timeout)`` (timeout = the last argument) and give up waiting
    ``grace_s`` after that timeout.

    librdkafka's ``send_offsets_to_transaction`` can block forever past its timeout when
    the group coordinator went away (confluentinc/librdkafka#5456, #5511): a broker
    restart is enough. The call runs on a helper thread; if it is still blocked, the
    producer is lost to that thread and the caller must build a new one (``STUCK``).
    """
    background = InBackground(lambda: call(*args), f"kafka-{call.__name__}")
    limit = args[-1] + grace_s
    deadline = time.monotonic() + limit
    background.wait(min(2.0, limit))
    while not background.done() and time.monotonic() < deadline:
        log.warning("Kafka not answering (%s blocked): waiting for the broker", call.__name__)
        background.wait(min(2.0, max(0.0, deadline - time.monotonic())))
    if not background.done():
        raise KafkaException(KafkaError(STUCK, f"{call.__name__} still blocked after {limit:g}s"))
    return background.result()


class InBackground:
    """One call on a helper thread, its outcome collected later on the caller's thread.

    The run loop commits a transaction this way while it handles the next interval's
    input: librdkafka's transactional calls wait for the broker (a few milliseconds per
    commit, ~8 % of the loop at full speed) with the GIL released; :func:`call_bounded`
    stops waiting for a call that does not return."""

    def __init__(self, call: Callable[[], Any], name: str) -> None:
        self._outcome: list[tuple[bool, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._outcome.append((True, call()))
        except BaseException as e:  # noqa: BLE001 - handed over to the calling thread
            self._outcome.append((False, e))

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` for the call to end (see :meth:`done`)."""
        self._thread.join(timeout_s)

    def result(self, timeout_s: float | None = None) -> Any:
        """Wait for the call (at most ``timeout_s``: then TimeoutError) and return what it
        returned, or raise what it raised."""
        self._thread.join(timeout_s)
        if not self._outcome:
            raise TimeoutError(f"{self._thread.name} still running after {timeout_s}s")
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


def is_fatal(error: KafkaError) -> bool:
    """The producer is unusable: fenced (by a newer instance, or by the broker after a
    transaction timed out), or another fatal error (`produce` then reports `_FATAL`)."""
    return error.fatal() or error.code() in FENCED


#: Errors that mean the configuration or the cluster's permissions are wrong: no retry helps.
_REFUSED_SETUP = frozenset({
    KafkaError.INVALID_TRANSACTION_TIMEOUT, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
})


def start_error(error: KafkaError) -> WorkerError:
    """What a Kafka error while starting up means, as one line: :class:`ConfigError` (exit
    2) when the settings or the permissions are wrong, else :class:`WorkerError`."""
    if error.code() in _REFUSED_SETUP:
        hint = (" (transaction_timeout_ms above the broker's transaction.max.timeout.ms?)"
                if error.code() == KafkaError.INVALID_TRANSACTION_TIMEOUT else "")
        return ConfigError(f"the broker refused the worker's set-up: {error.str()}{hint}")
    return WorkerError(f"cannot start: {error.str()}")
