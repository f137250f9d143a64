"""Frozen settings, their validation, and the librdkafka configuration dicts built from them.

Small and explicit on purpose: the CLI reads flags, `WORKER_*` variables and TOML files,
builds these objects (every invalid value is a `ConfigError` naming its key), and the
Kafka edges only ever see the dicts that `KafkaSettings` builds.

Precedence of librdkafka settings, lowest first:

1. the worker's defaults (``consumer_config()``, ``producer_config()``, ``admin_config()``);
2. ``KafkaSettings.extra`` — pass-through librdkafka settings (SASL, TLS, tuning),
   merged into all three dicts; a user setting wins over a default,

except for the keys the worker owns, which ``extra`` may not set at all (refused with a
`ConfigError` at construction, never silently overridden):

- ``bootstrap.servers``, ``group.id``, ``transaction.timeout.ms``: they have their own
  settings (``bootstrap``, ``group``, ``transaction_timeout_ms``);
- ``enable.auto.commit`` and ``transactional.id`` under either guarantee: offsets are
  committed by the worker, after the output they cover, and only ``exactly_once`` runs
  a transactional producer (whose id is derived from the group);
- ``isolation.level`` and ``enable.idempotence`` under ``exactly_once``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from worker.errors import ConfigError

Guarantee = Literal["exactly_once", "at_least_once"]
GUARANTEES: tuple[str, ...] = ("exactly_once", "at_least_once")

#: Largest message the worker writes (snapshot chunks on `models` / `worker-state`). The
#: compacted topics are created with this ``max.message.bytes`` and the producer's own
#: ``message.max.bytes`` is raised to it (librdkafka's default, 1000000, is below 1 MiB).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Kafka's limit on topic names and the characters it allows in them.
_TOPIC_NAME_MAX = 249
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")

# The one pass-through producer setting that confluent-kafka reads itself, and only as a
# bool (the string of --kafka-config made the producer raise TypeError at start).
_PYTHON_CLIENT_BOOL = "delivery.report.only.error"

# Keys of `extra` refused whatever the guarantee, and the setting to use instead.
_OWNED_KEYS: dict[str, str] = {
    "bootstrap.servers": "set 'bootstrap' (--bootstrap) instead",
    "group.id": "set 'group' (--group) instead",
    "transaction.timeout.ms": "set 'transaction_timeout_ms' (--transaction-timeout-ms) instead",
    "enable.auto.commit": "the worker commits offsets itself, after the output they cover",
    "transactional.id": "it is derived from the group (one active instance per group)",
}
# Keys of `extra` refused under exactly_once: the guarantee depends on their values.
_EXACTLY_ONCE_KEYS: dict[str, str] = {
    "isolation.level": "exactly_once reads read_committed",
    "enable.idempotence": "exactly_once needs the idempotent producer",
}


# ----------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class TopicNames:
    """The names of the topics of ARCHITECTURE §2; each is ``prefix + default name``.

    >>> TopicNames.from_prefix("shop.").control
    'shop.control'
    >>> TopicNames().all()
    ['events', 'labels', 'predictions', 'control', 'models', 'worker-state', 'events.dlq']
    """

    events: str = "events"
    labels: str = "labels"
    predictions: str = "predictions"
    control: str = "control"
    models: str = "models"
    worker_state: str = "worker-state"
    dlq: str = "events.dlq"

    @classmethod
    def from_prefix(cls, prefix: str = "") -> TopicNames:
        """Every default name with `prefix` in front, verbatim (no separator is added)."""
        check_topic_prefix(prefix)
        return cls(**{f.name: prefix + f.default for f in fields(cls)})

    def all(self) -> list[str]:
        """Every topic name, in the order of §2."""
        return [getattr(self, f.name) for f in fields(self)]


def check_topic_prefix(prefix: str, key: str = "topic_prefix") -> None:
    """Refuse a prefix that would give illegal Kafka topic names."""
    if not isinstance(prefix, str):
        raise ConfigError(f"{key} must be a string, got {type(prefix).__name__}")
    if not _TOPIC_CHARS.fullmatch(prefix):
        raise ConfigError(f"{key} {prefix!r} may only contain letters, digits, '.', '_' and '-'")
    longest = max(len(f.default) for f in fields(TopicNames))
    if len(prefix) + longest > _TOPIC_NAME_MAX:
        raise ConfigError(f"{key} is too long: topic names are limited to {_TOPIC_NAME_MAX} characters")


# ----------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class KafkaSettings:
    """How the worker talks to Kafka; builds the librdkafka dicts of its three clients.

    ``extra`` holds pass-through librdkafka settings (values are kept as strings; TOML
    booleans and numbers are converted). See the module docstring for precedence.
    """

    bootstrap: str
    group: str
    topic_prefix: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)
    guarantee: Guarantee = "exactly_once"
    commit_interval_ms: int = 100
    snapshot_interval_s: float = 10.0
    transaction_timeout_ms: int = 60000

    def __post_init__(self) -> None:
        _check_bootstrap(self.bootstrap)
        if not isinstance(self.group, str) or not self.group.strip() or self.group != self.group.strip():
            raise ConfigError(
                f"group must be a non-empty name without surrounding spaces, got {self.group!r}"
            )
        check_topic_prefix(self.topic_prefix)
        if self.guarantee not in GUARANTEES:
            raise ConfigError(f"guarantee must be one of {', '.join(GUARANTEES)}, got {self.guarantee!r}")
        _check_int("transaction_timeout_ms", self.transaction_timeout_ms, minimum=1000)
        _check_int("commit_interval_ms", self.commit_interval_ms, minimum=1)
        if self.commit_interval_ms >= self.transaction_timeout_ms:
            raise ConfigError(
                f"commit_interval_ms ({self.commit_interval_ms}) must be lower than "
                f"transaction_timeout_ms ({self.transaction_timeout_ms})"
            )
        s = self.snapshot_interval_s
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s <= 0:
            raise ConfigError(f"snapshot_interval_s must be a positive number of seconds, got {s!r}")
        object.__setattr__(self, "extra", MappingProxyType(self._checked_extra(self.extra)))

    def _checked_extra(self, extra: Mapping[str, Any]) -> dict[str, str]:
        if not isinstance(extra, Mapping):
            raise ConfigError(f"extra Kafka settings must be a mapping, got {type(extra).__name__}")
        out: dict[str, str] = {}
        for key, value in extra.items():
            if not isinstance(key, str) or not key.strip() or key != key.strip():
                raise ConfigError(f"Kafka setting name {key!r} is not a librdkafka property name")
            if key in _OWNED_KEYS:
                raise ConfigError(f"Kafka setting '{key}' cannot be overridden: {_OWNED_KEYS[key]}")
            if self.guarantee == "exactly_once" and key in _EXACTLY_ONCE_KEYS:
                raise ConfigError(f"Kafka setting '{key}' cannot be overridden: {_EXACTLY_ONCE_KEYS[key]}")
            out[key] = _librdkafka_value(key, value)
        return out

    # -- derived names

    @property
    def topics(self) -> TopicNames:
        return TopicNames.from_prefix(self.topic_prefix)

    @property
    def transactional_id(self) -> str | None:
        """Stable per group (one active instance per group, §5); None without transactions."""
        return f"worker-{self.group}" if self.guarantee == "exactly_once" else None

    @property
    def client_id(self) -> str:
        return f"worker-{self.group}"

    # -- librdkafka dicts

    def _base(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "client.id": self.client_id}

    def consumer_config(self) -> dict[str, Any]:
        """Input consumer: manual offsets, committed data only, start at the beginning."""
        config = self._base() | {
            "group.id": self.group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            # A bounded prefetch queue keeps the memory flat (1 MB halved throughput: the
            # loop sat waiting for fetches). Control has a consumer of its own.
            "queued.max.messages.kbytes": 4096,
        }
        return config | dict(self.extra)

    def producer_config(self, batch_bytes: int | None = None) -> dict[str, Any]:
        """Output producer: idempotent; transactional (fixed id per group) for exactly_once.
        ``batch_bytes``: librdkafka's ``batch.size``, when the output topics need batches
        smaller than its default (see runtime.handler.batch_bytes)."""
        config = self._base() | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # Back-to-back short transactions stall on CONCURRENT_TRANSACTIONS retries with
            # the default 100 ms backoff (confluent-kafka-python#967).
            "retry.backoff.ms": 10,
            "message.max.bytes": MAX_MESSAGE_BYTES,
        }
        if self.guarantee == "exactly_once":
            config |= {
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": self.transaction_timeout_ms,
                # A message must time out before the transaction that carries it.
                "message.timeout.ms": self.transaction_timeout_ms * 9 // 10,
            }
        if batch_bytes is not None:
            config["batch.size"] = batch_bytes
        config |= self.extra
        if _PYTHON_CLIENT_BOOL in config:
            config[_PYTHON_CLIENT_BOOL] = _flag(_PYTHON_CLIENT_BOOL, config[_PYTHON_CLIENT_BOOL])
        return config

    def admin_config(self) -> dict[str, Any]:
        """Admin client (topic creation and checks)."""
        return self._base() | dict(self.extra)


def _check_bootstrap(bootstrap: object) -> None:
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise ConfigError("bootstrap must name at least one broker, e.g. 127.0.0.1:9092")
    for server in bootstrap.split(","):
        server = server.strip()
        host, sep, port = server.rpartition(":")
        if not server or any(c.isspace() for c in server):
            raise ConfigError(f"bootstrap {bootstrap!r} is not a comma-separated list of host:port")
        if sep and host and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"bootstrap server {server!r} has an invalid port {port!r}")


def _check_int(key: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value}")


def _librdkafka_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(
        f"Kafka setting '{key}' must be a string, number or boolean, got {type(value).__name__}"
    )


def _flag(key: str, value: str) -> bool:
    """A pass-through setting that the Python client, not librdkafka, reads as a bool.

    >>> _flag("delivery.report.only.error", "False"), _flag("delivery.report.only.error", "true")
    (False, True)
    """
    word = value.strip().lower()
    if word not in ("true", "false"):
        raise ConfigError(f"Kafka setting '{key}' must be true or false, got {value!r}")
    return word == "true"


def parse_kafka_config(pairs: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``--kafka-config key=value`` options (the last one of a key wins).

    >>> parse_kafka_config(["security.protocol=SASL_SSL", "sasl.password=a=b"])
    {'security.protocol': 'SASL_SSL', 'sasl.password': 'a=b'}
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise ConfigError(f"--kafka-config expects key=value, got {pair!r}")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- TOML


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing, unreadable or malformed file is a `ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None


