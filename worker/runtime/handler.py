"""One input message → the engine → the output messages it causes.

The run loop calls :meth:`Handler.handle` for every message it consumes, and recovery
calls it for every message it replays with ``emit=False`` (those outputs were already
committed). Bad input of any kind is dead-lettered with its original bytes and never
raises: the worker keeps going.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message, Producer

from worker.core.engine import Engine, is_own_decision
from worker.core.types import Command, Position, Prediction
from worker.errors import BadInputError, ConfigError, InvalidCommandError, RefusedInputError
from worker.io.codec import (
    Limits,
    decode_command,
    decode_event,
    decode_label,
    dlq_headers,
    encode_command,
    encode_lifecycle,
    encode_prediction,
    verify_command,
)
from worker.io.freshness import DEFAULT_MAX_AGE_S, stale_command
from worker.io.lifecycle import SigningClock
from worker.io.models import model_messages, tombstones, versions_to_prune
from worker.io.topics import DEFAULT_MESSAGE_BYTES
from worker.settings import TopicNames

log = logging.getLogger("worker.run")


#: Bytes a message needs on the broker beyond its key, value and headers (the record
#: batch header is 61 bytes, the rest is length fields; kept generous).
RECORD_OVERHEAD = 512
#: The smallest snapshot chunk worth writing (a 100 MB forest would be 6,400 messages).
MIN_CHUNK_BYTES = 16_384


def batch_bytes(message_bytes: dict[str, int]) -> int | None:
    """librdkafka's ``batch.size`` for a producer that writes to topics with these
    ``max.message.bytes``: the broker refuses a batch of several messages larger than
    the limit (a single message larger than ``batch.size`` is sent alone). None when
    librdkafka's default (1,000,000) fits them all.

    >>> batch_bytes({"predictions": 1_048_588}), batch_bytes({"predictions": 1_048_588, "dlq": 20_000})
    (None, 19488)
    """
    smallest = min(message_bytes.values(), default=DEFAULT_MESSAGE_BYTES) - RECORD_OVERHEAD
    return smallest if smallest < 1_000_000 else None


def chunk_bytes(wanted: int, topic: str, message_bytes: dict[str, int]) -> int:
    """The size of the snapshot or model chunks written to ``topic``: ``wanted``, or less
    when the topic's ``max.message.bytes`` would refuse it (a hand-made topic; `worker
    topics create` allows 8 MiB). A limit too small for useful chunks is a
    :class:`ConfigError` at start, instead of a transaction that fails on every retry.

    >>> chunk_bytes(1_000_000, "models", {}), chunk_bytes(1_000_000, "models", {"models": 100_000})
    (1000000, 99488)
    >>> chunk_bytes(1_000_000, "models", {"models": 10_000})
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: topic models accepts messages of at most 10000 bytes ...
    """
    limit = message_bytes.get(topic, DEFAULT_MESSAGE_BYTES)
    if limit - RECORD_OVERHEAD < MIN_CHUNK_BYTES:
        raise ConfigError(f"topic {topic} accepts messages of at most {limit} bytes (max.message.bytes); "
                          f"snapshot chunks need {MIN_CHUNK_BYTES + RECORD_OVERHEAD}")
    return min(wanted, limit - RECORD_OVERHEAD)


def produce_prediction(producer: Producer, topic: str, prediction: Prediction, max_bytes: int) -> None:
    """The prediction's message, keyed by its event's key (the entity), else by its id.
    A prediction that cannot be serialised, or that the topic's ``max_bytes`` would
    refuse (a huge event key), raises :class:`BadInputError`: its event is dead-lettered.
    Inside a transaction a refused message would fail the transaction, again on every retry."""
    key = (prediction.key if prediction.key is not None else prediction.id).encode()
    value = encode_prediction(prediction)
    if len(key) + len(value) + RECORD_OVERHEAD > max_bytes:
        raise BadInputError(f"its prediction ({len(key) + len(value)} bytes with its key) is larger "
                            f"than {topic} accepts ({max_bytes} bytes)")
    producer.produce(topic, value, key)  # positional: keywords cost a third of the call


class HeldOutputs:
    """Stands in for the producer while the previous transaction commits on a helper
    thread (no message may be produced between a commit and the next begin): the
    ``produce`` calls are kept, in order, and :meth:`replay` makes them into the next
    transaction. Dropped with the transaction if the commit fails (recovery then serves
    their input again). At most one commit interval of outputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))

    def replay(self, producer: Producer) -> None:
        produce = producer.produce
        for args, kwargs in self.calls:
            produce(*args, **kwargs)
        self.calls = []


class DeadLetters:
    """Writes the messages that cannot be processed to the dead-letter topic (ARCHITECTURE.md
    §2): their original bytes, key and headers, with the ``dlq.*`` headers after them.
    Counts them, and says so in the log at most once a second, so that a flood of bad
    input cannot flood the log.

    A message that would not fit in the topic's ``max_bytes`` with its headers (one near
    the input topic's own limit) keeps the beginning of its key and value and gets a
    ``dlq.truncated`` header; ``dlq.original.*`` still say where the whole one is."""

    def __init__(self, topic: str, max_bytes: int = DEFAULT_MESSAGE_BYTES) -> None:
        self.topic = topic
        self.max_bytes = max_bytes
        self.count = 0
        self._logged_at = float("-inf")

    def write(self, producer: Producer, msg: Message, reason: str) -> None:
        position = (msg.topic(), msg.partition(), msg.offset())
        headers = [*producer_headers(msg.headers(), self.max_bytes), *dlq_headers(reason, position)]
        key, value, headers = fit_dead_letter(msg.key(), msg.value(), headers, self.max_bytes)
        producer.produce(self.topic, value=value, key=key, headers=headers)
        self.count += 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            log.warning("dead-lettered %s[%d]@%d: %s (%d so far)", *position, reason, self.count)


def producer_headers(headers: list[tuple[str, bytes | None]] | None,
                     max_bytes: int) -> list[tuple[str, bytes | None]]:
    """The input's own headers, kept on its dead letter while they take at most a quarter
    of ``max_bytes`` (the input topic may allow more than the dead-letter topic); else one
    ``dlq.headers.dropped`` header says how many there were.

    >>> producer_headers([("trace-id", b"t-1")], 2000)
    [('trace-id', b't-1')]
    >>> producer_headers([("blob", b"x" * 600)], 2000)
    [('dlq.headers.dropped', b'1 headers, 604 bytes')]
    """
    size = sum(len(name) + len(value or b"") for name, value in headers or [])
    if size <= max_bytes // 4:
        return list(headers or [])
    return [("dlq.headers.dropped", f"{len(headers)} headers, {size} bytes".encode())]


def fit_dead_letter(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                    max_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``key``, ``value`` and ``headers`` unchanged when they fit in ``max_bytes`` (nearly
    always); else the beginnings of key (at most half the room) and value, and a
    ``dlq.truncated`` header with their full sizes.

    >>> fit_dead_letter(b"k", b"v" * 10, [], 2000)
    (b'k', b'vvvvvvvvvv', [])
    >>> key, value, headers = fit_dead_letter(b"k", b"v" * 5000, [("dlq.error", b"not JSON")], 2000)
    >>> len(key) + len(value) + 512 + len("dlq.error") + len(b"not JSON") <= 2000, headers[-1]
    (True, ('dlq.truncated', b'key 1 bytes, value 5000 bytes'))
    """
    room = max_bytes - RECORD_OVERHEAD - sum(len(name) + len(v or b"") for name, v in headers)
    key_len, value_len = len(key or b""), len(value or b"")
    if key_len + value_len <= room:
        return key, value, headers
    note = ("dlq.truncated", f"key {key_len} bytes, value {value_len} bytes".encode())
    room -= len(note[0]) + len(note[1])
    key_room = min(key_len, room // 2)
    return (None if key is None else key[:key_room],
            None if value is None else value[:max(room - key_room, 0)],
            [*headers, note])


class Handler:
    """Routes messages by topic; writes predictions, dead letters and control messages."""

    def __init__(self, engine: Engine, producer: Producer | None, topics: TopicNames, *, limits: Limits,
                 secrets: tuple[bytes, ...], require_signed_commands: bool,
                 command_max_age_s: float = DEFAULT_MAX_AGE_S, chunk_bytes: int = 1_000_000,
                 serve: bool = True, models_retain: int = 0,
                 models_on_topic: dict[int, int] | None = None, learning_on_topic: set[int] | None = None,
                 message_bytes: dict[str, int] | None = None) -> None:
        self.engine = engine
        # False for `--role trainer`: scorers write the predictions and dead-letter bad
        # events (ARCHITECTURE.md §5); the trainer still learns from every event.
        self.serve = serve
        self.producer = producer
        self.topics = topics
        self.limits = limits
        # the first signs our commands and models; operators' commands may carry any
        # (RunSettings.secrets: the current secret, then those of before a rotation)
        self.secret, self.secrets = secrets[0], secrets
        self.signing = SigningClock()  # signed_at of our lifecycle events
        self.require_signed = require_signed_commands
        self.command_max_age_s = command_max_age_s  # a signed command logged later is a replay
        self._warned_create_time = False
        self.chunk_bytes = chunk_bytes
        # each output topic's max.message.bytes (topics.message_limits)
        message_bytes = message_bytes or {}
        self.prediction_bytes = message_bytes.get(topics.predictions, DEFAULT_MESSAGE_BYTES)
        self.dead_letters = DeadLetters(topics.dlq, message_bytes.get(topics.dlq, DEFAULT_MESSAGE_BYTES))
        # Versions on `models` (version → its number of chunks), as read at start and
        # written since; at most `models_retain` of them (0: no limit) plus the champion.
        self.models_on_topic = dict(models_on_topic or {})
        self.models_retain = models_retain
        # those whose last publication is of a model that still learns (`publish_learners`)
        self.learning_on_topic = set(learning_on_topic or ())
        self._learned: dict[int, int] = {}  # version → events it had learned when last published so

    def handle(self, msg: Message, emit: bool) -> Position:
        """Handle one message; returns its position (topic, partition, offset), which the
        run loop records in its progress record without asking the message again."""
        topic = msg.topic()
        position = (topic, msg.partition(), msg.offset())
        try:
            if topic == self.topics.events:
                prediction = self.engine.process(decode_event(msg.value(), msg.key(), position, self.limits))
                if emit and self.serve:
                    produce_prediction(self.producer, self.topics.predictions, prediction,
                                       self.prediction_bytes)
            elif topic == self.topics.labels:
                self.engine.process_label(decode_label(msg.value(), position, self.limits))
            else:
                self._control(msg)
        except BadInputError as e:
            if not isinstance(e, RefusedInputError):  # the engine counts what it refuses itself
                self.engine.count_undecodable()
            if emit and (self.serve or topic != self.topics.events):
                self.dead_letters.write(self.producer, msg, str(e))
                self.engine.observer.dead_letter()
        if self.engine.has_lifecycle:  # every decision comes with its lifecycle events
            self.flush(emit)
        return position

    def _control(self, msg: Message) -> None:
        try:
            decoded, raw = decode_command(msg.value(), self.limits)
        except InvalidCommandError as e:  # answered, then dead-lettered as bad input
            command = Command(type=e.command_type, command_id=e.command_id, issued_by=e.issued_by)
            self.engine.reject(command, f"invalid command: {e}")
            raise
        if not isinstance(decoded, Command):  # a lifecycle event: ours or another worker's answer
            signed_at = raw.get("signed_at")  # ours go after it, whatever this host's clock says
            if type(signed_at) in (int, float) and signed_at > self.signing.last and \
                    verify_command(raw, self.secrets):  # (ours, read back, need no check)
                self.signing.seen(signed_at)
            return
        # a wrong signature is refused even when none is required: the sender has another --secret
        signed = raw.get("signature") is not None
        if (self.require_signed or signed) and not verify_command(raw, self.secrets):
            reason = "bad signature" if signed else "missing signature"
            why = "this worker requires signed commands" if self.require_signed else "another secret made it"
            log.warning("rejected control command %s: %s", decoded.command_id, reason)
            self.engine.reject(decoded, f"{reason}: {why}")
            return
        applied = self.engine.has_applied(decoded.command_id)  # then reading it again is a no-op
        if not applied and is_own_decision(decoded):
            log.info("skipped %s: a decision of an earlier run, from before the state this engine was "
                     "restored from; it decides again", decoded.command_id)
            return
        stale = None if applied or not self.require_signed else \
            stale_command(raw, self._logged_at(msg), self.command_max_age_s)
        if stale is not None:
            log.warning("rejected control command %s: %s", decoded.command_id, stale)
            self.engine.reject(decoded, stale)
            return
        self.engine.apply(decoded)

    def _logged_at(self, msg: Message) -> float | None:
        """The broker's time on a control message, in seconds (worker.io.freshness); a
        warning, once, when it is the producer's (a replay could forge it)."""
        kind, ms = msg.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE:
            return None
        if kind == TIMESTAMP_CREATE_TIME and not self._warned_create_time:
            self._warned_create_time = True
            log.warning("%s dates its messages by the producers' clocks (CreateTime): a copy of an old "
                        "signed command written again with a forged time would pass the --command-max-age-s "
                        "check; set message.timestamp.type=LogAppendTime on it (kafka-configs.sh --alter)",
                        self.topics.control)
        return ms / 1000

    def flush(self, emit: bool) -> None:
        """Write (``emit``) or drop the engine's decisions and lifecycle events so far."""
        decisions = self.engine.take_decisions()
        lifecycle = self.engine.take_lifecycle()
        if not emit:
            return
        for command in decisions:
            self.producer.produce(self.topics.control, value=encode_command(command, self.secret))
        for event in lifecycle:
            self.producer.produce(self.topics.control,
                                  value=encode_lifecycle(event, self.secret, self.signing.next()))
            log.info("%s", event.type, extra={"context": {"command_id": event.command_id,
                                                          "champion": event.champion,
                                                          "challenger": event.challenger}})
        self.publish_champion()

    def publish_champion(self) -> None:
        """Write the champion to `models` (:mod:`worker.io.models`) unless it is there;
        not during the warm-up (version 1 still learns: see `publish_learners`). A former
        or current champion published while it learned is published once more, for good,
        when it stops learning; a replaced challenger leaves the topic.
        Called whenever lifecycle events are written, so no champion is missed: a message
        changes the champion at most once. Prunes the versions beyond ``models_retain``,
        in the same transaction."""
        engine = self.engine
        if not engine.warmed_up:
            return
        # only a trainer publishes models that learn again (for its scorers): a single
        # worker's publication of a champion that learns is as it was when promoted
        learners = [] if self.serve else engine.serving_learners()
        if engine.champion not in self.models_on_topic:
            self._publish(engine.champion, engine.champion in learners)
        for version in self._settled(learners):
            self._publish(version, learning=False)
        self.prune_models(self._discarded())
        self._prune_beyond_retain()

    def _settled(self, learners: list[int]) -> list[int]:
        """Champions, current or former, published while they learned, that no longer learn
        (the end of the warm-up, a promotion, a demotion) and whose model is still here."""
        registry = self.engine.registry
        return [v for v in sorted(self.learning_on_topic) if v not in learners and v in registry
                and registry[v].model is not None and "champion" in registry[v].roles]

    def _discarded(self) -> list[int]:
        """Challengers published while a split served them, then replaced (a reset): never
        champions, they will never serve again, so their models leave `models` (a champion
        stays, to roll back to)."""
        registry, engine = self.engine.registry, self.engine
        return [v for v in sorted(self.learning_on_topic) if v in registry and v != engine.challenger
                and "champion" not in registry[v].roles]

    def learners_due(self, interval_passed: bool) -> list[int]:
        """The versions that serve while they learn (:meth:`Engine.serving_learners`) and are
        due on `models`: at once when they just started to serve (or this handler has not
        published them yet), else when they learned since their last publication (not while
        learning is paused) and ``interval_passed``."""
        serving, registry = self.engine.serving_learners(), self.engine.registry
        for version in [v for v in self._learned if v not in serving]:
            del self._learned[version]  # when it serves again (a split set again), at once
        return [v for v in serving if v not in self._learned
                or (interval_passed and self._learned[v] != registry[v].learned)]

    def publish_learners(self, versions: list[int]) -> None:
        """Write these versions to `models` as they are now, still learning, so that scorers
        (`--role scorer`) serve them as a single worker does: version 1 during its warm-up,
        a champion that learns, a challenger under a traffic split. Prunes like
        `publish_champion` (the challenger is the newest version: it is kept)."""
        for version in versions:
            self._publish(version, learning=True)
        self._prune_beyond_retain()

    def _publish(self, version: int, learning: bool) -> None:
        messages = model_messages(self.engine.registry[version], self.secret, chunk_bytes=self.chunk_bytes,
                                  published_labelled=self.engine.counts["labelled"], learning=learning)
        for key, value in messages:
            self.producer.produce(self.topics.models, key=key, value=value)
        chunks, before = len(messages) - 1, self.models_on_topic.get(version, 0)  # all but the manifest
        for i in range(chunks, before):  # an earlier publication of this version had more
            self.producer.produce(self.topics.models, key=f"v{version}/{i}".encode(), value=None)
        self.models_on_topic[version] = chunks
        if learning:
            self.learning_on_topic.add(version)
            self._learned[version] = self.engine.registry[version].learned
        else:
            self.learning_on_topic.discard(version)

    def _prune_beyond_retain(self) -> None:
        self.prune_models(versions_to_prune(self.models_on_topic, self.models_retain, self.engine.champion))

    def prune_models(self, versions: list[int]) -> None:
        """Write the tombstones of these versions on `models` (the worker also prunes all of
        them when a new engine starts: its numbering starts again at v1)."""
        for version in versions:
            self.learning_on_topic.discard(version)
            self._learned.pop(version, None)
            for key, value in tombstones(version, self.models_on_topic.pop(version)):
                self.producer.produce(self.topics.models, key=key, value=value)
