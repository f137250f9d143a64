"""Start-up checks of `worker run`: the topics, their size limits, a stored state that
this secret cannot restore, and hanging transactions on the outputs. Each is a function
of the settings: none keeps state between starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from worker.errors import ConfigError, SignatureError
from worker.io import kafka
from worker.io.topics import check_not_deleted, check_shapes, message_limits, missing_topics, require_topics
from worker.runtime.checkpoints import KafkaCheckpoints
from worker.runtime.handler import chunk_bytes
from worker.runtime.run_settings import PARTITIONS_CHECK_S, RunSettings
from worker.settings import TopicNames

log = logging.getLogger("worker.run")


@dataclass(frozen=True)
class OutputLimits:
    """The outputs' size limits, read once at start (:func:`check_topics`)."""

    message_bytes: dict[str, int]  # max.message.bytes of the outputs (handler.DeadLetters)
    chunk_bytes: dict[str, int]  # chunk size on models and worker-state


def required_topics(topics: TopicNames) -> list[str]:
    return [t for t in topics.all() if t != topics.labels]  # labels is optional


def check_topics(settings: RunSettings) -> OutputLimits:
    """Every topic must exist but ``labels``, which is optional (ARCHITECTURE.md §2):
    without it labels come inline only, until it is created (Inputs.follow_new_partitions).
    Also checks their shapes, and reads the outputs' size limits (handler.DeadLetters)."""
    topics = settings.kafka.topics
    admin = settings.kafka.admin_config()
    require_topics(admin, required_topics(topics))
    check_shapes(admin, topics)
    message_bytes = message_limits(admin, [topics.predictions, topics.dlq, topics.control, topics.models,
                                           topics.worker_state])
    chunks = {t: chunk_bytes(settings.chunk_bytes, t, message_bytes)
              for t in (topics.models, topics.worker_state)}
    if missing_topics(admin, [topics.labels]):
        log.warning("no topic %s: labels come inline only until it is created (checked every %gs)",
                    topics.labels, PARTITIONS_CHECK_S)
    return OutputLimits(message_bytes, chunks)


def check_topics_not_deleted(settings: RunSettings) -> None:
    """A topic deleted while running: stop (exit 2) rather than wait in vain. The open
    transaction is aborted (by the next start's fencing), so nothing is lost."""
    check_not_deleted(settings.kafka.admin_config(), required_topics(settings.kafka.topics))


def state_reader(settings: RunSettings) -> Any:
    """A reader of worker-state and control, in a group of its own (it commits nothing)."""
    return kafka.reader({**settings.kafka.consumer_config(), "group.id": f"{settings.kafka.group}.recovery"})


def wrong_secret(settings: RunSettings, error: SignatureError, consequence: str) -> ConfigError:
    return ConfigError(f"the stored state of group {settings.kafka.group!r} cannot be restored "
                       f"with this --secret ({error}); {consequence}. After a secret rotation pass the "
                       "old secret as --previous-secret; --fresh starts over")


def check_stored_state(settings: RunSettings) -> None:
    """Refuse to start, before ``init_transactions`` fences the running instance, when
    the stored snapshot is signed with another secret: a mistyped ``--secret`` would
    otherwise stop a healthy worker and then itself. Refuse too when it is another
    group's: that group's engine reflects input up to its own offsets, while this group
    would read every input from its first offset (learning it twice, predicting it
    again). (The snapshot is read again by the recovery: the running instance may write
    a newer one meanwhile.) Exactly once and without ``--fresh`` only: the caller checks."""
    reader = state_reader(settings)
    topic, group = settings.kafka.topics.worker_state, settings.kafka.group
    try:
        loaded = KafkaCheckpoints(topic, settings.secrets).load(reader)  # verifies the snapshot
    except SignatureError as e:
        raise wrong_secret(settings, e, "nothing was taken over") from None
    finally:
        reader.close()
    if loaded.snapshot is None:
        return
    if loaded.group is not None and loaded.group != group:
        raise ConfigError(f"{topic} holds the state of group {loaded.group!r}, not {group!r}: a topic prefix "
                          f"holds one deployment. Run with --group {loaded.group}, give this deployment a "
                          "--topic-prefix of its own, or start over with --fresh (which discards that state)")


def warn_unstable_outputs(settings: RunSettings, consumer: Any) -> None:
    """Say so when a topic only this worker writes has an open transaction right
    after ``init_transactions`` closed ours: it is a hanging one (README, "Brokers for
    exactly once"), read_committed readers are stuck behind it, and the output may
    not be exactly once."""
    names = settings.kafka.topics
    only_ours = (names.models, names.worker_state)
    if settings.role == "all":  # else scorers write these
        only_ours += (names.predictions, names.dlq)
    outputs = [TopicPartition(t, p) for t in only_ours for p in kafka.partitions_of(consumer, t)]
    config = settings.kafka.consumer_config()
    for topic, partition, lso, hwm in kafka.unstable_partitions(config, outputs):
        log.warning("open transaction on %s[%d]: readers are held at offset %d of %d; no other producer "
                    "writes there, so it is hanging (a commit whose markers the broker lost?): exactly "
                    "once may not hold for it; inspect with kafka-transactions.sh find-hanging",
                    topic, partition, lso, hwm)
