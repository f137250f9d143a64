"""`worker run`: the Kafka worker loop (ARCHITECTURE.md §4, §5).

Exactly-once: one transaction per commit interval carries the predictions, dead
letters and control messages of a batch, a progress record (which input ranges were
processed, in order), the consumed offsets and — every snapshot interval — a signed
engine snapshot. Recovery fences any older instance (``init_transactions``), loads the
last snapshot from ``worker-state`` and replays the recorded ranges with output
suppressed, so the engine is exactly where the committed output says it is.

At-least-once: no transactions; outputs are produced as they come, and every snapshot
interval the engine is saved to a local file and then the offsets are committed.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from worker.core import state
from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.observer import Observer
from worker.errors import ConfigError, Fenced, SignatureError, SnapshotError, WorkerError
from worker.io import kafka
from worker.io.codec import DEFAULT_LIMITS, Limits
from worker.io.freshness import DEFAULT_MAX_AGE_S
from worker.io.lifecycle import latest_lifecycle
from worker.io.models import Catalog, read_models
from worker.io.topics import check_not_deleted, check_shapes, message_limits, missing_topics, require_topics
from worker.runtime.checkpoints import KafkaCheckpoints, LocalCheckpoints, Run
from worker.runtime.every import Every
from worker.runtime.handler import Handler, HeldOutputs, batch_bytes, chunk_bytes
from worker.settings import KafkaSettings

log = logging.getLogger("worker.run")

TXN_CALL_TIMEOUT_S = 30.0
OFFSETS_TIMEOUT_S = 10.0  # send_offsets_to_transaction; it may ignore it (see kafka.call_bounded)
ROLES = ("all", "trainer", "scorer")
HEARTBEAT_S = 2.0  # an idle exactly-once worker commits this often, to notice a takeover
PARTITIONS_CHECK_S = 5.0  # how often the inputs are checked for added partitions
# Three unexplained fencings within this time: another deployment shares the group. Each
# costs ~14 s on a loaded 2-core machine (a 5 s look at worker-state, a new producer, its
# recovery, the other's next transaction), so three take ~55 s: a minute was too tight.
FENCED_WINDOW_S = 180.0
LEARN_ERRORS_EVERY_S = 60.0  # at most one warning per minute about models that could not learn
# The GIL switch interval while a commit runs on the helper thread: librdkafka calls back
# into Python (delivery reports) while committing, and each time that thread waits for the
# busy loop to let go of the GIL, 5 ms by default (a commit took 90 ms instead of 5).
COMMIT_SWITCH_S = 0.0005


class CommitFailed(KafkaException):
    """The commit that ran on the helper thread failed; ``args[0]`` is its KafkaError. The
    loop had moved on to the next transaction's input, so it recovers from the last commit
    whatever the error (a retriable one included)."""


def version_label(version: int | None) -> str:
    """For log lines: ``v3``, or ``none`` (no challenger yet, nothing served yet)."""
    return "none" if version is None else f"v{version}"


def freeze_what_is_there() -> None:
    """Take every object alive now out of the cyclic GC's reach (``gc.freeze``): once the
    worker is ready that is mostly the imported libraries (~90,000 objects, which every
    full collection would otherwise scan again: ~30 ms each, a pause in serving). What
    an earlier start froze is collected first if it is garbage by now, so at most the
    objects of one start stay frozen (a model is freed by reference counting anyway;
    river's hold no cycles)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def install_stop_signals(owner: Any, what_next: str) -> None:
    """SIGTERM/SIGINT set ``owner.stopping`` (its loop finishes cleanly); a second one
    exits at once."""

    def stop(signum: int, _frame: Any) -> None:
        if owner.stopping:
            log.warning("second signal: exiting at once")
            os._exit(130)
        log.info("signal %d: %s", signum, what_next)
        owner.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


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


class Worker:
    """One active instance per group: it reads every partition by assignment."""

    def __init__(self, settings: RunSettings, engine_config: EngineConfig) -> None:
        self.settings = settings
        self.engine_config = engine_config
        self.observer = Observer()  # worker.obs.server.serve() swaps in the Prometheus one
        self.topics = settings.kafka.topics
        self.exactly_once = settings.kafka.guarantee == "exactly_once"
        self.stopping = False
        self.ready = False
        self.broker_unreachable = False  # set by the client's error callback, cleared by progress
        self.engine: Engine | None = None
        self._runs: list[list[Any]] = []
        self._last_snapshot = 0.0
        self._snapshot_events = 0  # engine's event count at the last snapshot
        self._learners_published = 0.0  # --role trainer: when models that learn were last published
        self._last_commit = 0.0
        self._status_due = Every(settings.status_interval_s)  # and one at each start (_start)
        self._learn_errors_said = 0  # engine.counts["learn_errors"] when last logged
        self._learn_errors_at = -LEARN_ERRORS_EVERY_S
        self._message_bytes: dict[str, int] = {}  # max.message.bytes of the outputs (_check_topics)
        self._chunk_bytes: dict[str, int] = {}  # chunk size on models and worker-state (_check_topics)
        self._unsaved = False  # at_least_once: the last local snapshot failed (retried when idle too)
        self._unexplained_failures: list[float] = []  # when the producer failed fatally, not taken over
        self._partitions_checked = time.monotonic()
        self._leftover: list[Any] = []  # consumed, not yet handled: the next transaction's
        self._assigned_at: dict[tuple[str, int], int] = {}  # the offsets _assign positioned at
        self._span_began: float | None = None  # first message handled in this transaction
        # exactly_once: the commit of the previous transaction, on a helper thread (see _commit)
        self._in_flight: kafka.InBackground | None = None
        self._in_flight_span: float | None = None  # its _span_began
        self._switch_interval = sys.getswitchinterval()  # restored when no commit is on its way
        self._last_consume_error = 0.0
        self._consumer = None  # events and labels
        self._control_consumer = None  # control alone, so that a command never waits behind them
        self._producer = None
        self._handler: Handler | None = None
        self.instance = uuid.uuid4().hex
        self._fresh = settings.fresh  # only the first start discards the stored state
        self._new_lineage = False  # the engine was not restored: its versions restart at v1

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (finish the interval, commit, exit) or a fatal error."""
        self._check_topics()
        install_stop_signals(self, "finishing the batch, committing, then exiting")
        config = {**self.settings.kafka.consumer_config(), "error_cb": self._on_client_error}
        self._consumer = kafka.consumer(config)
        self._control_consumer = kafka.consumer(config)  # the same group: one set of offsets
        try:
            self._check_stored_state()
            self._start()
        except KafkaException as e:  # e.g. a transaction timeout the broker does not allow
            self._close()
            raise kafka.start_error(e.args[0]) from None
        except WorkerError:
            self._close()
            raise
        try:
            while not self.stopping:
                try:
                    self._step()
                except KafkaException as e:
                    self._on_kafka_error(e.args[0], failed_commit=isinstance(e, CommitFailed))
            if self._in_flight is not None:  # the last interval's commit, handled as in the loop
                try:
                    self._settle()
                except KafkaException as e:
                    self._on_kafka_error(e.args[0], failed_commit=isinstance(e, CommitFailed))
            if self.ready:
                self._commit(force_snapshot=True, wait=True)  # a restart then has nothing to replay
        finally:
            self._close()
        log.info("stopped cleanly")

    def _start(self) -> None:
        """(Re)build the producer, recover the engine and position the consumer."""
        self.ready = False
        if self._producer is not None:
            self._producer.flush(5)
        config = self.settings.kafka.producer_config(batch_bytes(self._message_bytes))
        # the producer says so too: during an outage the loop may be waiting for a commit (on
        # the helper thread, which serves this callback) and not consume, so not hear it
        config["error_cb"] = self._on_client_error
        if not self.exactly_once:
            self._undelivered = 0
            config["on_delivery"] = self._on_delivery
        self._producer = kafka.producer(config)
        if self.exactly_once:
            self._producer.init_transactions(TXN_CALL_TIMEOUT_S)  # fences any older instance
            self._checkpoints = KafkaCheckpoints(self.topics.worker_state,
                                                 self._chunk_bytes[self.topics.worker_state])
            self._producer.begin_transaction()  # announce ourselves at once (see _taken_over)
            self._checkpoints.write_instance(self._producer, self.instance)
            self._producer.commit_transaction(TXN_CALL_TIMEOUT_S)
        offsets = self._recover()
        self._leftover, self._span_began = [], None
        self._snapshot_events = self.engine.counts["events"]
        self._learn_errors_said = self.engine.counts["learn_errors"]  # the restored ones were said
        self._assign(offsets)
        if self.exactly_once:
            self._warn_unstable_outputs()
            self._producer.begin_transaction()
        self._prune_previous_engine()
        self.engine.report_status()  # what it restored, signed: scorers and reports start from it
        self._handler.flush(emit=True)  # with the champion on `models`, unless it is there
        if self.exactly_once:
            self._commit(force_snapshot=True, wait=True)  # a fresh baseline: recovery never replays twice
        self.ready = True
        self._fresh = False
        freeze_what_is_there()
        log.info("ready: champion v%d, challenger %s, reading %d partitions", self.engine.champion,
                 version_label(self.engine.challenger),
                 len(self._consumer.assignment()) + len(self._control_consumer.assignment()))

    def _close(self) -> None:
        self.ready = False
        if self._in_flight is not None:  # an error stopped the loop while a commit was on its way
            try:
                self._in_flight.result(TXN_CALL_TIMEOUT_S)
            except (KafkaException, WorkerError, TimeoutError) as e:
                log.debug("commit on close: %s", e)
            self._in_flight = None
            sys.setswitchinterval(self._switch_interval)
        try:
            if self._producer is not None:
                self._producer.flush(10)
        except KafkaException as e:  # a fenced producer cannot flush; nothing is lost by it
            log.debug("producer flush on close: %s", e.args[0].str())
        for consumer in (self._consumer, self._control_consumer):
            if consumer is not None:
                consumer.close()

    def _check_topics(self) -> None:
        """Every topic must exist but ``labels``, which is optional (ARCHITECTURE.md §2):
        without it labels come inline only, until it is created (_follow_new_partitions).
        Also checks their shapes, and reads the outputs' size limits (handler.DeadLetters)."""
        admin = self.settings.kafka.admin_config()
        require_topics(admin, self._required_topics())
        check_shapes(admin, self.topics)
        self._message_bytes = message_limits(admin, [self.topics.predictions, self.topics.dlq,
                                                     self.topics.control, self.topics.models,
                                                     self.topics.worker_state])
        self._chunk_bytes = {t: chunk_bytes(self.settings.chunk_bytes, t, self._message_bytes)
                             for t in (self.topics.models, self.topics.worker_state)}
        if missing_topics(admin, [self.topics.labels]):
            log.warning("no topic %s: labels come inline only until it is created (checked every %gs)",
                        self.topics.labels, PARTITIONS_CHECK_S)

    # --- the loop ------------------------------------------------------------------------

    def _step(self) -> None:
        """Handle input for one commit interval, then commit. Messages are handled one by
        one while the interval lasts; what a consume() returned beyond it waits for the
        next transaction, so no transaction outlasts the interval by more than one
        message, however slow the models (a 500-message batch of a slow model would
        otherwise run past the transaction timeout, be aborted and be retried forever)."""
        interval = self.settings.kafka.commit_interval_ms / 1000
        deadline = time.monotonic() + interval
        budget = self.settings.commit_interval_events or None  # input messages per transaction
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or budget == 0:
                break
            self._settle(wait=False)  # the previous interval's commit, once it is done
            # commands first: control has a consumer of its own, so an operator's command
            # is handled within a commit interval, however long the events' backlog
            self._handle(self._control_consumer.consume(num_messages=100, timeout=0))
            if self._leftover:
                messages, self._leftover = self._leftover, []
            else:
                # consume() waits for a full batch or its timeout: keep the wait short, so
                # events are processed as they come and only the commit waits for the interval
                messages = self._consumer.consume(num_messages=self.settings.max_batch,
                                                  timeout=min(remaining, 0.01))
            began = time.monotonic()
            if messages:
                self.broker_unreachable = False
            handled = self._handle(messages, deadline, budget)
            if budget is not None:
                budget -= handled
            self.observer.observe_batch(time.monotonic() - began, handled)  # also when idle
        self._report_status_when_due()
        self._warn_learn_errors()
        self._follow_new_partitions()
        self._commit()

    def _handle(self, messages: list[Any], deadline: float | None = None, limit: int | None = None) -> int:
        """Handle ``messages`` in order; past ``deadline`` (after at least one) or after
        ``limit`` of them, keep the rest for the next transaction. Returns how many were
        taken."""
        if messages and self._span_began is None:
            self._span_began = time.monotonic()
        handled = 0
        handle, runs, monotonic = self._handler.handle, self._runs, time.monotonic  # once per batch
        for msg in messages:
            if handled and ((deadline is not None and monotonic() >= deadline)
                            or (limit is not None and handled >= limit)):
                self._leftover = messages[handled:]
                break
            handled += 1
            if msg.error():
                self._on_consume_error(msg.error())
                continue
            topic, partition, offset = handle(msg, True)
            # the progress record: a message extends the last run of its partition, else starts one
            run = runs[-1] if runs else None
            if run is not None and run[1] == partition and run[0] == topic and run[3] < offset:
                run[3] = offset
            else:
                runs.append([topic, partition, offset, offset])
        return handled

    def _follow_new_partitions(self) -> None:
        """Read the partitions added to ``events`` or ``labels`` since the assignment (a
        topic grown with ``kafka-topics --alter``, or ``labels`` created), from their
        beginning. A manual assignment does not follow a topic's growth: without this,
        their messages would wait for the next restart. Checked every ``PARTITIONS_CHECK_S``."""
        if time.monotonic() - self._partitions_checked < PARTITIONS_CHECK_S:
            return
        self._partitions_checked = time.monotonic()
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        added = []
        for topic in (self.topics.events, self.topics.labels):
            try:
                partitions = kafka.partitions_of(self._consumer, topic, timeout_s=1.0)
            except (KafkaException, ConfigError):
                continue  # the broker is away (the loop says so) or the topic is gone: next time
            added += [TopicPartition(topic, p, OFFSET_BEGINNING)
                      for p in partitions if (topic, p) not in assigned]
        if added:
            self._consumer.incremental_assign(added)
            log.warning("new partitions: %s; reading them from their beginning",
                        ", ".join(f"{tp.topic}[{tp.partition}]" for tp in added))

    def _report_status_when_due(self) -> None:
        """The periodic ``status_report`` (ARCHITECTURE.md §2), written with this interval's
        outputs. Not part of the engine's state: a recovery does not repeat it."""
        if self._status_due.due():
            self.engine.report_status()
            self._handler.flush(emit=True)

    def _warn_learn_errors(self) -> None:
        """Say so, at most once per :data:`LEARN_ERRORS_EVERY_S`, when models could not
        learn: labels of the wrong type (strings for a binary classifier) would otherwise
        show only in the metrics, as a model that never learns."""
        errors = self.engine.counts["learn_errors"]
        now = time.monotonic()
        if errors > self._learn_errors_said and now - self._learn_errors_at >= LEARN_ERRORS_EVERY_S:
            log.warning("models could not learn a labelled event %d times (%d since the state began); "
                        "last: %s", errors - self._learn_errors_said, errors, self.engine.learn_error)
            self._learn_errors_said, self._learn_errors_at = errors, now

    def _processed_offsets(self) -> list[TopicPartition]:
        """Where each input continues after what was handled: the consumer's position,
        except where messages are left for the next transaction (see _step): there, the
        first of them. A partition not read from has no position yet: it stands where it
        was assigned (control's end, when there was no state), which must be committed too,
        or a command sent while the worker is down would be skipped after a restart."""
        positions = dict(self._assigned_at)  # where a partition not read from yet stands
        positions.update({(tp.topic, tp.partition): tp.offset
                          for consumer in (self._consumer, self._control_consumer)
                          for tp in consumer.position(consumer.assignment()) if tp.offset >= 0})
        first_left: dict[tuple[str, int], int] = {}
        for msg in self._leftover:
            if not msg.error():
                first_left.setdefault((msg.topic(), msg.partition()), msg.offset())
        positions.update(first_left)
        return [TopicPartition(t, p, o) for (t, p), o in positions.items()]

    def _commit(self, force_snapshot: bool = False, wait: bool = False) -> None:
        """Commit what was handled since the last commit (exactly once: one transaction; at
        least once: a snapshot when due). The transaction commits on a helper thread while
        the loop goes on with the next interval's input (:meth:`_settle`), unless ``wait``."""
        self._settle()  # the previous commit first (done by now, nearly always)
        every_events = self.settings.snapshot_interval_events
        events_since = self.engine.counts["events"] - self._snapshot_events
        now = time.monotonic()
        snapshot_due = force_snapshot or (
            (self._runs or self._unsaved)
            and (now - self._last_snapshot >= self.settings.kafka.snapshot_interval_s
                 or self.engine.snapshot_requested
                 or (every_events and events_since >= every_events))
        )
        idle_for = now - self._last_commit
        # a trainer republishes the models that serve while they learn, for its scorers
        learners = self._handler.learners_due(
            now - self._learners_published >= self.settings.kafka.snapshot_interval_s
        ) if self.settings.role == "trainer" else []
        if (not self._runs and not snapshot_due and not learners
                and not (self.exactly_once and idle_for >= HEARTBEAT_S)):
            return
        if learners:
            self._handler.publish_learners(learners)
            self._learners_published = now
        if self.exactly_once:
            if not self._runs and not snapshot_due:
                # An idle instance would never learn that a newer one fenced it: touch the log.
                self._checkpoints.write_instance(self._producer, self.instance)
            self._commit_transaction(snapshot_due)
            if wait:
                self._settle()
        else:
            self._producer.poll(0)
            if snapshot_due:
                self._save_local()
        self._runs = []

    def _commit_transaction(self, snapshot: bool) -> None:
        producer = self._producer
        if snapshot:
            began = time.monotonic()
            self.engine.snapshot_requested = False
            meta = {"events": self.engine.counts["events"], "champion": self.engine.champion}
            self._checkpoints.write_snapshot(producer, self.engine.snapshot(self.settings.secret), meta)
            self._last_snapshot = time.monotonic()
            self._snapshot_events = self.engine.counts["events"]
            self.observer.observe_checkpoint(self._last_snapshot - began)
            log.debug("snapshot written in %.3fs", self._last_snapshot - began)
        elif self._runs:
            self._checkpoints.write_progress(producer, self._runs)
        positions = self._processed_offsets()
        metadata = self._consumer.consumer_group_metadata() if positions else None
        self._in_flight_span, self._span_began = self._span_began, None
        producer.poll(0)  # the delivery reports so far, on this thread: the commit then has few left
        sys.setswitchinterval(COMMIT_SWITCH_S)  # until _settle
        self._in_flight = kafka.InBackground(lambda: self._end_transaction(producer, positions, metadata),
                                             "kafka-commit")
        self._handler.producer = HeldOutputs()  # until the next transaction has begun

    def _end_transaction(self, producer: Any, positions: list[TopicPartition], metadata: Any) -> None:
        """On the helper thread: the consumed offsets, the commit, the next begin."""
        if positions:
            kafka.call_bounded(producer.send_offsets_to_transaction, positions, metadata, OFFSETS_TIMEOUT_S)
        kafka.retrying(producer.commit_transaction, TXN_CALL_TIMEOUT_S, self._check_not_deleted)
        producer.begin_transaction()

    def _settle(self, wait: bool = True) -> None:
        """Collect the commit on its way, when it is done or (``wait``) once it is: the
        outputs held meanwhile go into the transaction it began. A failed commit raises
        :class:`CommitFailed`; the held outputs are dropped with it (recovery serves their
        input again)."""
        in_flight = self._in_flight
        if in_flight is None or not (wait or in_flight.done()):
            return
        self._in_flight = None
        sys.setswitchinterval(self._switch_interval)
        held, self._handler.producer = self._handler.producer, self._producer
        try:
            in_flight.result()
        except KafkaException as e:
            raise CommitFailed(e.args[0]) from None
        self._last_commit = time.monotonic()
        self.broker_unreachable = False
        held.replay(self._producer)
        if self._in_flight_span is not None:
            self.observer.observe_transaction(self._last_commit - self._in_flight_span)

    def _check_not_deleted(self) -> None:
        """A topic deleted while running: stop (exit 2) rather than wait in vain. The open
        transaction is aborted (by the next start's fencing), so nothing is lost."""
        check_not_deleted(self.settings.kafka.admin_config(), self._required_topics())

    def _required_topics(self) -> list[str]:
        return [t for t in self.topics.all() if t != self.topics.labels]  # labels is optional

    # --- recovery ------------------------------------------------------------------------

    def _check_stored_state(self) -> None:
        """Refuse to start, before ``init_transactions`` fences the running instance, when
        the stored snapshot is signed with another secret: a mistyped ``--secret`` would
        otherwise stop a healthy worker and then itself. (The snapshot is read again by
        the recovery: the running instance may write a newer one meanwhile.)"""
        if self._fresh or not self.exactly_once:
            return
        reader = self._state_reader()
        try:
            snapshot = KafkaCheckpoints(self.topics.worker_state).load(reader).snapshot
        finally:
            reader.close()
        if snapshot is None:
            return
        try:
            state.verify(snapshot, self.settings.secrets)
        except SignatureError as e:  # anything else wrong with it is the recovery's to say
            raise self._wrong_secret(e, "nothing was taken over") from None

    def _wrong_secret(self, error: SignatureError, consequence: str) -> ConfigError:
        return ConfigError(f"the stored state of group {self.settings.kafka.group!r} cannot be restored "
                           f"with this --secret ({error}); {consequence}. After a secret rotation pass the "
                           "old secret as --previous-secret; --fresh starts over")

    def _state_reader(self) -> Any:
        return kafka.reader({**self.settings.kafka.consumer_config(),
                             "group.id": f"{self.settings.kafka.group}.recovery"})

    def _recover(self) -> dict[tuple[str, int], int]:
        """Rebuild the engine; return the input offsets to continue from."""
        reader = self._state_reader()
        try:
            offsets = self._recover_from_kafka(reader) if self.exactly_once else self._recover_from_file()
        finally:
            reader.close()
        # Observed from here on: replayed input was counted when it was first processed.
        self.engine.observer = self.observer
        if self._fresh:  # a new engine answers no command sent to the one it replaces (ARCHITECTURE.md §2)
            offsets = {tp: offset for tp, offset in offsets.items() if tp[0] != self.topics.control}
        return offsets

    def _recover_from_kafka(self, reader: Any) -> dict[tuple[str, int], int]:
        loaded = self._checkpoints.load(reader)
        self._new_engine(loaded.snapshot)
        runs: list[Run] = [] if self._fresh else loaded.runs
        began = time.monotonic()
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, partition, first, last in runs:
            low, high = spans.get((topic, partition), (first, last))
            spans[topic, partition] = (min(low, first), max(high, last))
        self._warn_deleted_spans(reader, spans)
        messages = kafka.read_spans(reader, spans) if spans else {}
        for topic, partition, first, last in runs:
            stored = messages[topic, partition]
            for offset in range(first, last + 1):
                msg = stored.get(offset)  # gaps: transaction markers, aborted messages
                if msg is not None:
                    self._handler.handle(msg, emit=False)
        if runs:
            log.info("recovered: replayed %d input ranges in %.1fs", len(runs), time.monotonic() - began)
        return kafka.committed(self._consumer, self._all_partitions())

    def _warn_deleted_spans(self, reader: Any, spans: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Input to replay that retention deleted first (the worker was down longer than the
        topic keeps its messages) cannot be replayed: say so, the state lacks it."""
        for (topic, partition), (first, last) in spans.items():
            tp = TopicPartition(topic, partition)
            low, _ = reader.get_watermark_offsets(tp, timeout=TXN_CALL_TIMEOUT_S, cached=False)
            if first < low:
                log.warning("%s[%d] offsets %d-%d are gone (deleted by retention) and cannot be replayed: "
                            "the recovered state lacks what they held", topic, partition, first,
                            min(last, low - 1))

    def _recover_from_file(self) -> dict[tuple[str, int], int]:
        settings = self.settings
        self._local = LocalCheckpoints(settings.state_dir, settings.kafka.group, settings.secrets)
        self._local.check_writable()
        try:
            saved = None if self._fresh else self._local.load()
        except SignatureError as e:
            raise self._wrong_secret(e, "stopping") from None
        self._new_engine(saved[0] if saved else None)
        if saved:
            return saved[1]
        return kafka.committed(self._consumer, self._all_partitions())

    def _new_engine(self, snapshot: bytes | None) -> None:
        self._new_lineage = snapshot is None or self._fresh
        if not self._new_lineage:
            try:
                self.engine = Engine.restore(snapshot, self.settings.secrets, self.engine_config)
            except SignatureError as e:
                raise self._wrong_secret(e, "stopping") from None
            except SnapshotError as e:
                raise SnapshotError(f"the stored state cannot be restored: {e} (after a secret rotation, "
                                    "pass the old secret as --previous-secret; --fresh starts over)") from e
            log.info("restored engine: champion v%d, challenger %s, %d events seen", self.engine.champion,
                     version_label(self.engine.challenger), self.engine.counts["events"])
        else:
            self.engine = Engine(self.engine_config)
            log.info("new engine%s", " (--fresh: stored state ignored)" if self._fresh else "")
        self.engine.model_source = self._published_model
        catalog = self._models()
        on_topic = {m["version"]: m["chunks"] for m in catalog.manifests()}
        self._handler = Handler(self.engine, self._producer, self.topics, limits=self.settings.limits,
                                secrets=self.settings.secrets,
                                require_signed_commands=self.settings.require_signed_commands,
                                command_max_age_s=self.settings.command_max_age_s,
                                chunk_bytes=self._chunk_bytes[self.topics.models],
                                serve=self.settings.role == "all",
                                models_retain=self.settings.models_retain,
                                message_bytes=self._message_bytes,
                                models_on_topic=on_topic,
                                learning_on_topic=catalog.learning())
        self._handler.signing.seen(self._last_signed_at())

    def _last_signed_at(self) -> float:
        """When the last lifecycle event on control that this worker's secrets verify was
        signed: its own go after it, so scorers follow them even when this host's clock is
        behind the previous instance's."""
        reader = self._state_reader()
        try:
            latest = latest_lifecycle(reader, self.topics.control, self.settings.secrets, warn=False)
        finally:
            reader.close()
        return latest[1] if latest is not None else -math.inf

    def _prune_previous_engine(self) -> None:
        """At start, a new engine first prunes the previous engine's versions from `models`
        (its own v1 must not be taken for theirs); the status report that follows says on
        control that v1 is champion now, and publishes it (:meth:`Handler.flush`)."""
        stale = sorted(self._handler.models_on_topic) if self._new_lineage else []
        if stale:
            log.warning("new engine: pruning the %d versions of the previous engine from %s (v%d-v%d)",
                        len(stale), self.topics.models, stale[0], stale[-1])
            self._handler.prune_models(stale)

    def _warn_unstable_outputs(self) -> None:
        """Say so when a topic only this worker writes has an open transaction right
        after ``init_transactions`` closed ours: it is a hanging one (README, "Brokers for
        exactly once"), read_committed readers are stuck behind it, and the output may
        not be exactly once."""
        names = self.topics
        only_ours = (names.models, names.worker_state)
        if self.settings.role == "all":  # else scorers write these
            only_ours += (names.predictions, names.dlq)
        outputs = [TopicPartition(t, p) for t in only_ours for p in kafka.partitions_of(self._consumer, t)]
        config = self.settings.kafka.consumer_config()
        for topic, partition, lso, hwm in kafka.unstable_partitions(config, outputs):
            log.warning("open transaction on %s[%d]: readers are held at offset %d of %d; no other producer "
                        "writes there, so it is hanging (a commit whose markers the broker lost?): exactly "
                        "once may not hold for it; inspect with kafka-transactions.sh find-hanging",
                        topic, partition, lso, hwm)

    def _models(self, chunks_of: tuple[int, ...] = ()) -> Catalog:
        kafka_settings = self.settings.kafka
        config = {**kafka_settings.consumer_config(), "group.id": f"{kafka_settings.group}.models-reader"}
        return read_models(config, self.topics.models, chunks_of=chunks_of)

    def _published_model(self, version: int) -> Any:
        """A former champion's model from the `models` topic (None if it was never
        there), for a rollback to a version the engine no longer keeps in memory."""
        catalog = self._models(chunks_of=(version,))
        if catalog.published(version) or catalog.pruned(version):
            return catalog.load(version, self.settings.secrets)  # says when it was pruned
        return None

    def _all_partitions(self) -> list[TopicPartition]:
        """Every partition of the inputs; none of ``labels`` while it does not exist."""
        out = []
        for topic in (self.topics.events, self.topics.labels, self.topics.control):
            try:
                partitions = kafka.partitions_of(self._consumer, topic)
            except ConfigError:
                if topic == self.topics.labels:
                    continue
                raise
            out += [TopicPartition(topic, p) for p in partitions]
        return out

    def _assign(self, offsets: dict[tuple[str, int], int]) -> None:
        """Inputs resume where the committed state ends; with no state, events and labels
        start at the beginning and control at its end (ARCHITECTURE.md §2).

        Control's end is looked up now, not left to the consumer as OFFSET_END: that is
        resolved whenever the consumer gets to it, and a command sent in between (right
        after the worker said it was ready, on a busy machine) would be skipped."""
        inputs, control = [], []
        for tp in self._all_partitions():
            offset = offsets.get((tp.topic, tp.partition))
            if tp.topic == self.topics.control:
                if offset is None:
                    _, offset = self._consumer.get_watermark_offsets(tp, timeout=TXN_CALL_TIMEOUT_S,
                                                                     cached=False)
                control.append(TopicPartition(tp.topic, tp.partition, offset))
            else:
                inputs.append(TopicPartition(tp.topic, tp.partition,
                                             OFFSET_BEGINNING if offset is None else offset))
        self._consumer.assign(inputs)
        self._control_consumer.assign(control)
        self._assigned_at = {(tp.topic, tp.partition): tp.offset
                             for tp in (*inputs, *control) if tp.offset >= 0}

    def _on_delivery(self, error: KafkaError | None, _msg: Any) -> None:
        if error is not None:
            self._undelivered += 1

    def _save_local(self) -> None:
        """At-least-once checkpoint: every output delivered, then the snapshot, then the
        offsets. An output that could not be delivered sends us back to the last snapshot."""
        began = time.monotonic()
        if self._producer.flush(TXN_CALL_TIMEOUT_S) or self._undelivered:
            log.warning("%d outputs not delivered: resuming from the last snapshot", self._undelivered)
            self._restart()
            return
        positions = self._processed_offsets()
        try:
            self._local.save(self.engine.snapshot(self.settings.secret),
                             {(tp.topic, tp.partition): tp.offset for tp in positions})
        except OSError as e:  # a full disk: go on serving; nothing is committed without a snapshot
            log.warning("cannot write the snapshot to %s (%s): offsets not committed, retrying at the next "
                        "snapshot interval", self._local.path, e)
            self._last_snapshot, self._unsaved = time.monotonic(), True
            return
        self._unsaved = False
        if positions:
            self._consumer.commit(offsets=positions, asynchronous=False)
        self._last_snapshot = time.monotonic()
        self._snapshot_events = self.engine.counts["events"]
        self.observer.observe_checkpoint(self._last_snapshot - began)

    # --- errors --------------------------------------------------------------------------

    def _on_kafka_error(self, error: KafkaError, failed_commit: bool = False) -> None:
        if self._in_flight is not None:  # a commit on its way: its outcome first
            try:
                self._settle()
            except KafkaException as e:  # the commit failed, or so did its held outputs
                error, failed_commit = e.args[0], isinstance(e, CommitFailed)
        if error.code() == kafka.STUCK:
            log.warning("%s: abandoning the producer, recovering with a new one", error.str())
            self._producer, self.ready = None, False  # a call is still blocked inside it: let it be
            self._restart()
        elif kafka.is_fatal(error):
            group, txn_id = self.settings.kafka.group, self.settings.kafka.transactional_id
            if self.exactly_once and self._taken_over():
                raise Fenced(f"fenced: another instance of group {group!r} took over "
                             f"(transactional.id {txn_id}); exiting")
            now = time.monotonic()
            self._unexplained_failures = [t for t in self._unexplained_failures
                                          if now - t < FENCED_WINDOW_S] + [now]
            if len(self._unexplained_failures) >= 3:
                # Not a newer instance of ours (it would have written to our worker-state),
                # yet fenced again and again: another deployment (another topic prefix) with
                # the same group. Recovering would fence it in turn, forever.
                raise Fenced(f"fenced 3 times within {FENCED_WINDOW_S:.0f} s by a producer with "
                             f"transactional.id {txn_id} "
                             f"that is not an instance of this deployment: does another deployment use "
                             f"group {group!r}? Give each its own --group; exiting")
            log.warning("producer failed (%s): new producer, recovering from the last commit", error.str())
            self._restart()
        elif (error.txn_requires_abort() or error.code() in (KafkaError._TIMED_OUT, KafkaError._STATE)
              or failed_commit):
            # _STATE: produce() in a transaction that has already failed (e.g. the broker
            # refused one of its messages); abort it like any abortable error
            if error.code() in kafka.UNKNOWN_TOPIC:
                self._check_not_deleted()  # and stop, if a topic was deleted
            log.warning("transaction aborted (%s): recovering from the last commit", error.str())
            try:
                self._producer.abort_transaction(TXN_CALL_TIMEOUT_S)
            except KafkaException as e:
                log.warning("abort failed (%s): new producer", e.args[0].str())
            self._restart()
        elif error.retriable():
            log.warning("retriable Kafka error: %s", error.str())
        else:
            raise KafkaException(error)

    def _taken_over(self, wait_s: float = 5.0) -> bool:
        """Fenced by a newer instance, or by the broker aborting a transaction of ours
        that timed out? A new instance commits its id to worker-state right after it
        fences us; while the id there is still ours after ``wait_s``, it was a timeout."""
        reader = self._state_reader()
        deadline = time.monotonic() + wait_s
        try:
            while True:
                if KafkaCheckpoints(self.topics.worker_state).load(reader).instance != self.instance:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)
        except KafkaException:
            return True  # cannot tell: stopping is the safe side
        finally:
            reader.close()

    def _restart(self) -> None:
        self._runs = []
        while not self.stopping:
            try:
                self._start()
                return
            except KafkaException as e:
                if kafka.is_fatal(e.args[0]) and self._taken_over():
                    raise Fenced(f"fenced while recovering: another instance of group "
                                 f"{self.settings.kafka.group!r} took over; exiting") from None
                log.warning("recovery failed (%s); retrying", e.args[0].str())
                time.sleep(1.0)

    def _on_client_error(self, error: KafkaError) -> None:
        kafka.log_client_error(error)
        if error.code() in kafka.UNREACHABLE:
            self.broker_unreachable = True

    def _on_consume_error(self, error: KafkaError) -> None:
        now = time.monotonic()
        if now - self._last_consume_error >= 5.0:  # errors repeat with every fetch
            self._last_consume_error = now
            if error.code() in kafka.UNKNOWN_TOPIC:
                self._check_not_deleted()
            log.warning("Kafka: %s (waiting for the broker)", error.str())
