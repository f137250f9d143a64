"""Create and check the worker's topics (ARCHITECTURE §2) with the Kafka admin client.

Every failure to talk to the cluster is a `ConfigError` that names the bootstrap servers,
raised within bounded time: librdkafka retries an unreachable broker forever, so every
call here carries a timeout. librdkafka's own log lines go to the ``worker.kafka``
logger (silent unless logging is configured) instead of straight to stderr.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic

from worker.errors import ConfigError
from worker.settings import MAX_MESSAGE_BYTES, TopicNames

log = logging.getLogger("worker.kafka")
log.addHandler(logging.NullHandler())

#: Longest wait for the first answer of the cluster before "cannot reach Kafka".
CONNECT_TIMEOUT_S = 8.0

COMPACTED = {"cleanup.policy": "compact", "max.message.bytes": str(MAX_MESSAGE_BYTES)}
# The broker dates each control message itself: a replayed signed command cannot carry
# a forged time (worker.io.freshness).
APPEND_TIMES = {"message.timestamp.type": "LogAppendTime"}
DEFAULT_MESSAGE_BYTES = 1_048_588  # Kafka's default max.message.bytes


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(names: TopicNames, partitions: int) -> list[TopicSpec]:
    """The topics of §2: control has exactly one partition (one total order) and the
    broker's append times; the models and worker-state logs are compacted, take snapshot
    chunks, and have one partition each (one ordered log per group); the others get
    `partitions`."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ConfigError(f"partitions must be a positive integer, got {partitions!r}")
    return [
        TopicSpec(names.events, partitions),
        TopicSpec(names.labels, partitions),
        TopicSpec(names.predictions, partitions),
        TopicSpec(names.control, 1, dict(APPEND_TIMES)),
        TopicSpec(names.models, 1, dict(COMPACTED)),
        TopicSpec(names.worker_state, 1, dict(COMPACTED)),
        TopicSpec(names.dlq, partitions),
    ]


def create_topics(
    admin_config: dict[str, Any],
    names: TopicNames,
    partitions: int,
    *,
    replication_factor: int = -1,
    timeout_s: float = 30,
) -> dict[str, str]:
    """Create every topic of §2 that does not exist yet; returns {name: "created" | "exists"}.

    Idempotent. ``replication_factor=-1`` takes the broker's ``default.replication.factor``.
    A topic that already exists is left as it is, but an existing control, models or
    worker-state topic with more than one partition, or a models / worker-state topic that
    is not compacted, is refused.
    """
    specs = topic_specs(names, partitions)
    admin = _admin(admin_config)
    _metadata(admin, admin_config, timeout_s)  # fail fast on an unreachable cluster
    futures = admin.create_topics(
        [
            NewTopic(
                s.name, num_partitions=s.partitions, replication_factor=replication_factor, config=s.config
            )
            for s in specs
        ],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    result: dict[str, str] = {}
    for spec in specs:
        try:
            futures[spec.name].result(timeout=timeout_s + 5)
            result[spec.name] = "created"
        except KafkaException as e:
            error = e.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigError(f"cannot create topic '{spec.name}': {_describe(error)}") from None
            result[spec.name] = "exists"
        except concurrent.futures.TimeoutError:
            raise ConfigError(f"creating topic '{spec.name}' did not finish in {timeout_s:g}s") from None
    existing = [s for s in specs if result[s.name] == "exists"]
    if existing:
        _check_existing(admin, admin_config, existing, names, timeout_s)
    _await_metadata(admin, admin_config, [s.name for s in specs], timeout_s)
    return result


def _await_metadata(admin: AdminClient, admin_config: dict[str, Any], names: list[str],
                    timeout_s: float) -> None:
    """A created topic shows in metadata a moment later: wait, so that a `worker run`
    started right after `worker topics create` finds every topic."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = _metadata(admin, admin_config, timeout_s).topics
        if all(name in topics and topics[name].partitions
               and all(part.leader >= 0 for part in topics[name].partitions.values()) for name in names):
            return
        if time.monotonic() > deadline:
            raise ConfigError(f"topics not visible in the cluster metadata after {timeout_s:g}s")
        time.sleep(0.1)


def missing_topics(admin_config: dict[str, Any], required: list[str], timeout_s: float = 10) -> list[str]:
    """The topics of `required` that the cluster does not have, in the given order."""
    present = _metadata(_admin(admin_config), admin_config, timeout_s).topics
    return [name for name in required if name not in present]


def check_not_deleted(admin_config: dict[str, Any], topics: list[str]) -> None:
    """Raise :class:`ConfigError` naming the ``topics`` that were deleted while running (a
    commit then waits for them in vain); nothing when the broker cannot be asked: it is
    away, and the caller waits for it."""
    try:
        missing = missing_topics(admin_config, topics, timeout_s=5)
    except ConfigError:
        return
    if missing:
        raise ConfigError(f"missing topics {', '.join(missing)} (deleted while running?): create them "
                          "again with `worker topics create`, then restart")


def require_topics(admin_config: dict[str, Any], required: list[str], timeout_s: float = 10) -> None:
    """Raise :class:`ConfigError` naming the topics of ``required`` that do not exist, and
    the command that creates them (with the prefix they were looked for under)."""
    missing = missing_topics(admin_config, required, timeout_s)
    if missing:
        names = f"topic: {missing[0]}" if len(missing) == 1 else f"topics: {', '.join(missing)}"
        raise ConfigError(f"missing {names} (create {'it' if len(missing) == 1 else 'them'} with "
                          f"`{create_command(missing[0])}`)")


def create_command(topic: str) -> str:
    """The ``worker topics create`` that makes ``topic``, one of the topics of a prefix.

    >>> create_command("fraud.events.dlq"), create_command("control")
    ('worker topics create --topic-prefix fraud.', 'worker topics create')
    """
    for default in sorted(TopicNames.from_prefix("").all(), key=len, reverse=True):
        if topic.endswith(default):
            prefix = topic[: -len(default)]
            return "worker topics create" + (f" --topic-prefix {prefix}" if prefix else "")
    return "worker topics create"


def check_shapes(admin_config: dict[str, Any], names: TopicNames, timeout_s: float = 10,
                 only: Collection[str] | None = None) -> None:
    """Refuse a control, models or worker-state topic with more than one partition, or a
    models / worker-state topic that is not compacted (:class:`ConfigError`): topics made by hand, not by
    `worker topics create`, are checked at `worker run`'s start the same way. A
    worker-state with time retention would lose the snapshot a restart needs."""
    shaped = (names.control, names.models, names.worker_state) if only is None else only
    specs = [s for s in topic_specs(names, 1) if s.name in shaped]
    _check_existing(_admin(admin_config), admin_config, specs, names, timeout_s)


def message_limits(admin_config: dict[str, Any], topics: list[str], timeout_s: float = 10) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (its own setting or the broker's default), so
    that the worker never writes a message the broker refuses: inside a transaction a
    refused message fails the transaction, and the retry would fail the same way. A
    topic whose configuration cannot be read (e.g. no DescribeConfigs permission) gets
    ``DEFAULT_MESSAGE_BYTES``, Kafka's own default."""
    admin = _admin(admin_config)
    resources = {t: ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics}
    futures = admin.describe_configs(list(resources.values()), request_timeout=timeout_s)
    limits = {}
    for name, resource in resources.items():
        try:
            entry = futures[resource].result(timeout=timeout_s + 5).get("max.message.bytes")
            limits[name] = int(entry.value) if entry is not None and entry.value else DEFAULT_MESSAGE_BYTES
        except (KafkaException, concurrent.futures.TimeoutError, ValueError) as e:
            log.warning("cannot read max.message.bytes of %s (%s): assuming %d",
                        name, e, DEFAULT_MESSAGE_BYTES)
            limits[name] = DEFAULT_MESSAGE_BYTES
    return limits


# ----------------------------------------------------------------------------- helpers


def _admin(admin_config: dict[str, Any]) -> AdminClient:
    try:
        return AdminClient({"logger": log, **admin_config})
    except KafkaException as e:
        raise ConfigError(f"invalid Kafka client setting: {_describe(e.args[0])}") from None
    except (TypeError, ValueError) as e:  # a setting the Python client reads itself
        raise ConfigError(f"invalid Kafka client setting: {e}") from None


def _metadata(admin: AdminClient, admin_config: dict[str, Any], timeout_s: float) -> ClusterMetadata:
    timeout = min(timeout_s, CONNECT_TIMEOUT_S)
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as e:
        where = admin_config.get("bootstrap.servers", "?")
        raise ConfigError(
            f"cannot reach Kafka at {where}: {_describe(e.args[0])} (waited {timeout:g}s)"
        ) from None


# Why a topic must have exactly one partition: each is read as one ordered log.
ONE_PARTITION_WHY = {
    "control": "one total order of commands and decisions",
    "models": "one ordered log of the published models, read from partition 0",
    "worker-state": "one ordered log of snapshots and progress records, read from partition 0",
}


def _check_existing(
    admin: AdminClient, admin_config: dict[str, Any], specs: list[TopicSpec], names: TopicNames,
    timeout_s: float,
) -> None:
    """Refuse existing topics whose shape breaks a guarantee (one partition for control,
    models and worker-state, compacted state logs); other differences (e.g. the inputs'
    partition counts) are left alone."""
    single = {names.control: "control", names.models: "models", names.worker_state: "worker-state"}
    ordered = [s.name for s in specs if s.name in single]
    if ordered:
        topics = _metadata(admin, admin_config, timeout_s).topics
        for name in ordered:
            topic = topics.get(name)
            if topic is not None and len(topic.partitions) != 1:
                raise ConfigError(
                    f"topic '{name}' exists with {len(topic.partitions)} partitions; the {single[name]} "
                    f"topic must have exactly 1 ({ONE_PARTITION_WHY[single[name]]})"
                )
    compacted = [s for s in specs if s.config.get("cleanup.policy") == "compact"]
    if not compacted:
        return
    resources = {s.name: ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in compacted}
    futures = admin.describe_configs(list(resources.values()), request_timeout=timeout_s)
    for name, resource in resources.items():
        try:
            configs = futures[resource].result(timeout=timeout_s + 5)
        except KafkaException as e:
            raise ConfigError(f"cannot describe topic '{name}': {_describe(e.args[0])}") from None
        except concurrent.futures.TimeoutError:
            raise ConfigError(f"describing topic '{name}' did not finish in {timeout_s:g}s") from None
        policy = configs["cleanup.policy"].value if "cleanup.policy" in configs else ""
        if "compact" not in (policy or "").split(","):
            raise ConfigError(
                f"topic '{name}' exists with cleanup.policy={policy}; it must be compacted (compact)"
            )


def _describe(error: object) -> str:
    return error.str() if isinstance(error, KafkaError) else str(error)
