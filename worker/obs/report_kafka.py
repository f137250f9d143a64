"""The report's one read from Kafka: the whole control topic, decoded.

Kept apart so the rest of the report (data, charts, page) never needs a broker. The
Kafka imports are inside :func:`read_control`, so that importing this module (as
:mod:`worker.obs.report` does) does not load librdkafka for `worker report RUN_DIR`.
"""

from __future__ import annotations

from typing import Any

from worker.errors import ConfigError


def read_control(admin_config: dict[str, Any], control_topic: str) -> list[dict]:
    """Every committed message of the control topic, decoded (undecodable ones skipped)."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, KafkaException

    from worker.io import kafka

    reader = kafka.reader({**admin_config, "group.id": "worker-report"})
    out: list[dict] = []
    try:
        kafka.partitions_of(reader, control_topic)
        for msg in kafka.read_range(reader, control_topic, 0, OFFSET_BEGINNING):
            try:
                out.append(orjson.loads(msg.value()))
            except orjson.JSONDecodeError:
                continue
    except KafkaException as e:
        raise ConfigError(f"could not read {control_topic} to its end: {e.args[0].str()}") from None
    finally:
        reader.close()
    return out
