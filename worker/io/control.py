"""The operator's side of the control topic: send a command, wait for its answer.

The worker answers every command on the same one-partition topic with lifecycle events
that carry the command's ``command_id`` (``promoted``, ``status_report`` …, then
``command_applied`` or ``command_rejected``), so waiting is reading the topic from the
offset the command was written at until the final answer appears.

Every step is bounded, so that a script calling ``worker control … --wait W`` gets its
exit code in time whatever the broker does (README, "Operators talk to the running
worker"): an unreachable broker or a missing control topic is reported within
``connect_timeout(W)`` = W clamped to [3 s, 8 s]; a command the broker does not
acknowledge within that time too; a broker lost while waiting for the answer after W
and a probe of at most ``PROBE_S``. librdkafka itself retries an unreachable broker
forever: its calls here all carry a timeout, and a message its own
(``message.timeout.ms``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.core.types import Command
from worker.errors import BrokerLost, ConfigError, WorkerError
from worker.io import kafka
from worker.io.codec import encode_command
from worker.io.topics import CONNECT_TIMEOUT_S, missing_topics, require_topics

FINAL = frozenset({"command_applied", "command_rejected"})
#: The least time given to reach the broker (TCP, TLS and SASL handshakes to a remote
#: cluster), however short --wait; the most is topics.CONNECT_TIMEOUT_S, as `worker run`.
MIN_CONNECT_S = 3.0
#: After a wait during which the broker went away: how long to ask whether it is back.
PROBE_S = 2.0


def connect_timeout(wait_s: float) -> float:
    """How long to wait for the broker (its metadata, the command's acknowledgement):
    ``wait_s`` within [MIN_CONNECT_S, CONNECT_TIMEOUT_S].

    >>> connect_timeout(0.0), connect_timeout(5.0), connect_timeout(30.0)
    (3.0, 5.0, 8.0)
    """
    return min(max(wait_s, MIN_CONNECT_S), CONNECT_TIMEOUT_S)


class _Link:
    """What the reader's error callback said about the broker since it last delivered
    something (a message, or the end of the partition)."""

    def __init__(self) -> None:
        self.lost: str | None = None  # the last "cannot reach" error, while no progress since

    def on_error(self, error: KafkaError) -> None:
        kafka.log_client_error(error)
        if error.code() in kafka.UNREACHABLE:
            self.lost = error.str()

    def progress(self) -> None:
        self.lost = None


def send_and_wait(admin_config: dict[str, Any], control_topic: str, command: Command,
                  secret: bytes | None, wait_s: float, again: bool = False) -> list[dict[str, Any]] | None:
    """Write ``command``; return the lifecycle events answering it (the last one final),
    or None when no final answer came within ``wait_s`` seconds. A missing topic, a
    broker unreachable (within ``connect_timeout(wait_s)``) raise :class:`ConfigError`, a
    command it did not acknowledge or a broker lost during the wait :class:`BrokerLost`
    (both exit 2), a command the broker refused :class:`WorkerError`: one clear line, not
    a librdkafka error.

    ``again``: the command may have been sent before (a retry with the same id, which the
    worker applies once and does not answer twice): an answer already on the topic is
    returned without sending anything."""
    where = admin_config.get("bootstrap.servers", "?")
    connect_s = connect_timeout(wait_s)
    require_topics(admin_config, [control_topic], timeout_s=connect_s)  # or "cannot reach Kafka"
    resend = f"to send it again, not twice: --command-id {command.command_id}"
    link = _Link()
    # the command's own delivery timeout: librdkafka would otherwise retry it for 5 minutes
    producer = kafka.producer({**admin_config, "enable.idempotence": True, "acks": "all",
                               "message.timeout.ms": int(connect_s * 1000)})
    reader = kafka.reader({**admin_config, "group.id": "worker-control-cli", "error_cb": link.on_error})
    try:
        start = None  # where to look for the answer: after the command, or all that came since the look
        if again:
            try:
                start = kafka.bounds(reader, control_topic)[1]
                earlier = _earlier(reader, control_topic, command.command_id)
            except KafkaException as e:  # the broker went away since it answered the metadata request
                raise BrokerLost(f"lost Kafka at {where} while looking for an earlier answer on "
                                 f"{control_topic}: {e.args[0].str()}; nothing was sent") from None
            _check_same_command(earlier, command)
            if answers := _answers(earlier, command.command_id):
                return answers
        delivered: list[Any] = []
        producer.produce(control_topic, value=encode_command(command, secret),
                         on_delivery=lambda err, msg: delivered.append(err or msg))
        producer.flush(connect_s + 2)  # message.timeout.ms has failed it by then, if the broker is away
        if not delivered or isinstance(delivered[0], KafkaError):
            reason = delivered[0].str() if delivered else "no acknowledgement"
            if delivered and delivered[0].code() not in (KafkaError._MSG_TIMED_OUT, *kafka.UNREACHABLE):
                raise WorkerError(f"cannot write the command to {control_topic}: {reason}")
            raise BrokerLost(f"no acknowledgement from Kafka at {where} within {connect_s:g}s for the "
                             f"command {command.command_id} on {control_topic} ({reason}): it may still "
                             f"have been written; {resend}")
        answers = _await(reader, control_topic, delivered[0].offset() if start is None else start,
                         command.command_id, wait_s, link)
        if answers is None and link.lost is not None and not _reachable(admin_config, control_topic):
            raise BrokerLost(f"lost Kafka at {where} while waiting {wait_s:g}s for the answer "
                             f"({link.lost}): the command {command.command_id} is on {control_topic} and "
                             f"is applied when the worker reads it; {resend}")
        return answers
    finally:
        reader.close()


def _reachable(admin_config: dict[str, Any], topic: str) -> bool:
    """Whether the broker answers a metadata request within PROBE_S: asked by a new
    client, which connects at once (the reader waits out its reconnect backoff, up to
    ``reconnect.backoff.max.ms``, after a long outage)."""
    try:
        missing_topics(admin_config, [topic], timeout_s=PROBE_S)
    except ConfigError:
        return False
    return True


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


def _about(messages: Iterable[Any], command_id: str) -> Iterator[dict[str, Any]]:
    """The control messages (decoded) that carry ``command_id``: copies of the command,
    and lifecycle events (with a ``detail``) answering it."""
    for msg in messages:
        try:
            obj = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("command_id") == command_id:
            yield obj


def _check_same_command(messages: list[Any], command: Command) -> None:
    """A command id already used by a command of another type would make the worker skip
    this one as a duplicate (and its answer would answer the other): refuse it."""
    for obj in _about(messages, command.command_id):
        if "detail" not in obj and obj.get("type") != command.type:
            raise ConfigError(f"--command-id {command.command_id} was used by a {obj.get('type')} command: "
                              f"a {command.type} under it would be skipped as a duplicate; give it a new id")


def _answered(messages: list[Any], command_id: str) -> bool:
    """Whether a copy of the command comes before a final answer to it."""
    sent = False
    for obj in _about(messages, command_id):
        if "detail" not in obj:
            sent = True
        elif sent and obj.get("type") in FINAL:
            return True
    return False


def _await(reader: Any, topic: str, start: int, command_id: str, wait_s: float,
           link: _Link) -> list[dict] | None:
    reader.assign([TopicPartition(topic, 0, start)])
    deadline = time.monotonic() + wait_s

    def messages() -> Iterator[Any]:
        while time.monotonic() < deadline:
            msg = reader.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            if not msg.error() or msg.error().code() == KafkaError._PARTITION_EOF:
                link.progress()  # the broker answers
            if not msg.error():
                yield msg

    return _answers(messages(), command_id)


def _answers(messages: Iterable[Any], command_id: str) -> list[dict[str, Any]] | None:
    """The lifecycle events answering ``command_id`` up to the final one, or None."""
    answers: list[dict[str, Any]] = []
    for obj in _about(messages, command_id):
        if "detail" in obj:
            answers.append(obj)
            if obj.get("type") in FINAL:
                return answers
    return None
