"""What `worker run` is given (:class:`RunSettings`), and the timings of the Kafka calls
that the worker and the scorer share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ConfigError
from worker.io.codec import DEFAULT_LIMITS, Limits
from worker.io.freshness import DEFAULT_MAX_AGE_S
from worker.settings import KafkaSettings

TXN_CALL_TIMEOUT_S = 30.0
OFFSETS_TIMEOUT_S = 10.0  # send_offsets_to_transaction; it may ignore it (see kafka.call_bounded)
ROLES = ("all", "trainer", "scorer")
PARTITIONS_CHECK_S = 5.0  # how often the inputs are checked for added partitions


@dataclass(frozen=True)
class RunSettings:
    """Everything `worker run` needs besides the engine's own settings."""

    kafka: KafkaSettings
    secret: bytes
    # Secrets of before a rotation: what they signed (snapshots, models, commands) is
    # still accepted; everything new is signed with `secret` only.
    previous_secrets: tuple[bytes, ...] = ()
    require_signed_commands: bool = False
    # with signed commands required: one the broker logged longer after its signed ts is
    # refused as a replay (worker.io.freshness); 0: no check
    command_max_age_s: float = DEFAULT_MAX_AGE_S
    fresh: bool = False
    max_batch: int = 500
    chunk_bytes: int = 1_000_000
    state_dir: Path = Path(".worker-state")
    metrics_port: int | None = None
    limits: Limits = DEFAULT_LIMITS
    status_interval_s: float = 60.0  # a periodic status_report on control; 0: none
    commit_interval_events: int = 0  # also commit after this many input messages; 0: time only
    snapshot_interval_events: int = 0  # also snapshot after this many events; 0: time only
    role: str = "all"  # or "trainer" / "scorer" (ARCHITECTURE.md §5)
    scorer_id: str = "scorer"  # --role scorer: names its transactional.id
    models_retain: int = 100  # champions kept on the `models` topic (and the serving one); 0: all

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError("a secret is required to sign snapshots (--secret or WORKER_SECRET)")
        if not all(isinstance(p, bytes) and p for p in self.previous_secrets):
            raise ConfigError("previous_secrets must be non-empty strings")
        if self.role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role != "all" and self.kafka.guarantee != "exactly_once":  # a trainer's versions must
            raise ConfigError(f"--role {self.role} needs --guarantee exactly_once")  # never be reused
        valid_id = isinstance(self.scorer_id, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,100}", self.scorer_id)
        if self.role == "scorer" and not valid_id:  # only scorers use it (a host name may not fit)
            raise ConfigError(f"scorer_id must be 1-100 of A-Z a-z 0-9 . _ -; got {self.scorer_id!r}")
        for name in ("commit_interval_events", "snapshot_interval_events", "models_retain"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"{name} must be a whole number >= 0 (0: off), got {n!r}")
        for name in ("status_interval_s", "command_max_age_s"):
            s = getattr(self, name)
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < float("inf"):
                raise ConfigError(f"{name} must be a number of seconds >= 0 (0: off), got {s!r}")

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """What a signature is checked against: the secret, then the previous ones."""
        return (self.secret, *self.previous_secrets)

