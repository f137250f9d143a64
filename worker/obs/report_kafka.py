"""The report's one read from Kafka: the whole control topic, decoded.

Kept apart so the rest of the report (data, charts, page) never needs a broker. The
Kafka imports are inside :func:`read_control`, so that importing this module (as
:mod:`worker.obs.report` does) does not load librdkafka for `worker report RUN_DIR`.
"""

from __future__ import annotations

import time
from typing import Any

from worker.errors import ConfigError


def read_control(admin_config: dict[str, Any], control_topic: str, timeout_s: float = 30.0) -> list[dict]:
    """Every committed message of the control topic, decoded (undecodable ones skipped)."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

    from worker.io import kafka

    reader = kafka.reader({**admin_config, "group.id": "worker-report", "isolation.level": "read_committed"})
    out: list[dict] = []
    try:
        kafka.partitions_of(reader, control_topic)
        reader.assign([TopicPartition(control_topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while True:
            messages = reader.consume(num_messages=10_000, timeout=0.5)
            if not messages and time.monotonic() > deadline:
                raise ConfigError(f"could not read {control_topic} to its end within {timeout_s:g}s")
            done = False
            for msg in messages:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise KafkaException(msg.error())
                try:
                    out.append(orjson.loads(msg.value()))
                except orjson.JSONDecodeError:
                    continue
            if done:
                return out
            if messages:
                deadline = time.monotonic() + timeout_s
    finally:
        reader.close()
