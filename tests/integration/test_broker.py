"""The local broker does what the worker relies on: groups, transactions, compaction."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

DEADLINE_S = 60


def consume(consumer: Consumer, count: int, timeout_s: float = DEADLINE_S) -> list:
    """Read until `count` messages arrived (or the deadline passed)."""
    messages: list = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=count - len(messages), timeout=1.0):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(msg.error())
            messages.append(msg)
    return messages


def read_to_end(bootstrap: str, topic: str, isolation: str = "read_committed") -> list:
    """Every message of a one-partition topic, from the beginning to its current end."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
        "isolation.level": isolation, "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return messages
                raise AssertionError(msg.error())
            messages.append(msg)
        raise AssertionError(f"did not reach the end of {topic} in {DEADLINE_S}s")
    finally:
        consumer.close()


def test_group_commit_is_resumed_by_a_second_consumer(bootstrap, create_topic, unique):
    topic = create_topic(unique("group"), partitions=2)
    group = unique("g")
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(100):
        producer.produce(topic, key=str(i % 7), value=str(i))
    assert producer.flush(30) == 0

    config = {"bootstrap.servers": bootstrap, "group.id": group,
              "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    first = Consumer(config)
    first.subscribe([topic])
    got_first = consume(first, 40)
    assert len(got_first) == 40
    first.commit(asynchronous=False)
    first.close()

    second = Consumer(config)
    second.subscribe([topic])
    got_second = consume(second, 60)
    second.close()

    values = sorted(int(m.value()) for m in got_first + got_second)
    assert values == list(range(100)), "the second consumer resumes exactly where the first committed"


def test_read_committed_never_sees_aborted_messages(bootstrap, create_topic, unique):
    topic = create_topic(unique("txn"))
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique("tid")})
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"committed-{i}")
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"aborted-{i}")
    producer.flush(30)  # the aborted messages really reach the log
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, value="committed-last")
    producer.commit_transaction(30)

    committed = [m.value().decode() for m in read_to_end(bootstrap, topic)]
    assert committed == [f"committed-{i}" for i in range(10)] + ["committed-last"]
    uncommitted = [m.value().decode() for m in read_to_end(bootstrap, topic, "read_uncommitted")]
    assert sum(v.startswith("aborted-") for v in uncommitted) == 10


def test_transactional_id_fences_the_older_producer(bootstrap, create_topic, unique):
    topic = create_topic(unique("fence"))
    tid = unique("tid")
    old = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    old.init_transactions(30)
    new = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    new.init_transactions(30)

    old.begin_transaction()
    old.produce(topic, value="from-old")
    try:
        old.commit_transaction(30)
    except Exception as e:  # noqa: BLE001 - the exact error class is what we inspect
        error = e.args[0]
        assert error.fatal() or error.code() == KafkaError._FENCED
    else:
        raise AssertionError("the older producer was not fenced")
    assert read_to_end(bootstrap, topic) == []


def test_compacted_topic_keeps_the_latest_value_per_key(bootstrap, create_topic, unique):
    topic = create_topic(unique("compact"), config={
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
        "delete.retention.ms": "0", "min.compaction.lag.ms": "0",
    })
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    assert described["cleanup.policy"].value == "compact"

    producer = Producer({"bootstrap.servers": bootstrap})
    for version in range(3):
        for key in ("a", "b", "c"):
            producer.produce(topic, key=key, value=f"{key}{version}")
        producer.flush(30)
        time.sleep(0.15)  # past segment.ms, so the next write rolls a new segment

    def compacted() -> bool:
        values = [(m.key(), m.value()) for m in read_to_end(bootstrap, topic)]
        per_key = [v for k, v in values if k in (b"a", b"b", b"c")]
        return sorted(per_key) == [b"a2", b"b2", b"c2"]

    deadline = time.monotonic() + 2 * DEADLINE_S  # the cleaner is one thread, for every test's topics
    filler = 0
    while not compacted():
        assert time.monotonic() < deadline, "the log cleaner did not compact the topic in time"
        producer.produce(topic, key=f"filler-{filler}", value=b"x")  # rolls the dirty segment
        producer.flush(30)
        filler += 1
        time.sleep(0.2)  # the cleaner runs on its own clock (log.cleaner.backoff.ms)
