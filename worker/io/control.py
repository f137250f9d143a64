"""The operator's side of the control topic: send a command, wait for its answer.

The worker answers every command on the same one-partition topic with lifecycle events
that carry the command's ``command_id`` (``promoted``, ``status_report`` …, then
``command_applied`` or ``command_rejected``), so waiting is reading the topic from the
offset the command was written at until the final answer appears.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from confluent_kafka import KafkaError, TopicPartition

from worker.core.types import Command
from worker.errors import WorkerError
from worker.io import kafka
from worker.io.codec import encode_command
from worker.io.topics import require_topics

FINAL = frozenset({"command_applied", "command_rejected"})
DELIVERY_TIMEOUT_S = 30.0  # to write the command, whatever --wait says for the answer


def send_and_wait(admin_config: dict[str, Any], control_topic: str, command: Command,
                  secret: bytes | None, wait_s: float, again: bool = False) -> list[dict[str, Any]] | None:
    """Write ``command``; return the lifecycle events answering it (the last one final),
    or None when no final answer came within ``wait_s`` seconds. A missing topic or an
    unreachable broker raises :class:`ConfigError`, a command that cannot be written
    :class:`WorkerError`: one clear line, not a librdkafka error.

    ``again``: the command may have been sent before (a retry with the same id, which the
    worker applies once and does not answer twice): an answer already on the topic is
    returned without sending anything."""
    require_topics(admin_config, [control_topic])
    producer = kafka.producer({**admin_config, "enable.idempotence": True, "acks": "all"})
    reader = kafka.reader({**admin_config, "group.id": "worker-control-cli"})
    try:
        start = None  # where to look for the answer: after the command, or all that came since the look
        if again:
            start = kafka.bounds(reader, control_topic)[1]
            if answers := _answers(_earlier(reader, control_topic, command.command_id), command.command_id):
                return answers
        delivered: list[Any] = []
        producer.produce(control_topic, value=encode_command(command, secret),
                         on_delivery=lambda err, msg: delivered.append(err or msg))
        producer.flush(DELIVERY_TIMEOUT_S)  # not bounded by wait_s: a command is written or refused
        if not delivered or isinstance(delivered[0], KafkaError):
            reason = delivered[0].str() if delivered else "not delivered in time"
            raise WorkerError(f"cannot write the command to {control_topic}: {reason}")
        return _await(reader, control_topic, delivered[0].offset() if start is None else start,
                      command.command_id, wait_s)
    finally:
        reader.close()


def _earlier(reader: Any, topic: str, command_id: str) -> list[Any]:
    """The messages on ``topic`` that mention ``command_id``, read back from the end until
    they hold a copy of the command followed by its final answer (the answers may span
    two blocks, and the command may have been sent again after it was answered)."""
    key = orjson.dumps(command_id)[1:-1]  # as JSON writes it in a message
    found: list[Any] = []
    for block in kafka.read_backwards(reader, topic):
        found = [msg for msg in block if key in (msg.value() or b"")] + found
        if _answered(found, command_id):
            break
    return found


def _answered(messages: list[Any], command_id: str) -> bool:
    """Whether a copy of the command comes before a final answer to it."""
    sent = False
    for msg in messages:
        try:
            obj = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or obj.get("command_id") != command_id:
            continue
        if "detail" not in obj:
            sent = True
        elif sent and obj.get("type") in FINAL:
            return True
    return False


def _await(reader: Any, topic: str, start: int, command_id: str, wait_s: float) -> list[dict] | None:
    reader.assign([TopicPartition(topic, 0, start)])
    deadline = time.monotonic() + wait_s

    def messages() -> Iterator[Any]:
        while time.monotonic() < deadline:
            msg = reader.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if msg is not None and not msg.error():
                yield msg

    return _answers(messages(), command_id)


def _answers(messages: Iterable[Any], command_id: str) -> list[dict[str, Any]] | None:
    """The lifecycle events answering ``command_id`` up to the final one, or None."""
    answers: list[dict[str, Any]] = []
    for msg in messages:
        try:
            obj = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("command_id") == command_id and "detail" in obj:
            answers.append(obj)
            if obj.get("type") in FINAL:
                return answers
    return None
