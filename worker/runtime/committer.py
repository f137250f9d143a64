"""Commits (ARCHITECTURE.md §4). Exactly once: one transaction per commit interval holds
the interval's outputs, its progress record (or, every snapshot interval, a signed engine
snapshot) and the consumed offsets; it commits on a helper thread while the loop goes on
with the next interval's input, whose outputs are held until the next transaction has
begun. At least once: every snapshot interval, the outputs are delivered, the engine is
saved to the local file, then the offsets are committed."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.core.engine import Engine
from worker.core.observer import Observer
from worker.errors import StoppedUncommitted, WorkerError
from worker.io import kafka
from worker.runtime.checkpoints import KafkaCheckpoints, LocalCheckpoints
from worker.runtime.handler import Handler, HeldOutputs
from worker.runtime.inputs import Inputs
from worker.runtime.run_settings import OFFSETS_TIMEOUT_S, TXN_CALL_TIMEOUT_S, RunSettings

log = logging.getLogger("worker.run")

HEARTBEAT_S = 2.0  # an idle exactly-once worker commits this often, to notice a takeover
# The GIL switch interval while a commit runs on the helper thread: librdkafka calls back
# into Python (delivery reports) while committing, and each time that thread waits for the
# busy loop to let go of the GIL, 5 ms by default (a commit took 90 ms instead of 5).
COMMIT_SWITCH_S = 0.0005


class CommitFailed(KafkaException):
    """The commit that ran on the helper thread failed; ``args[0]`` is its KafkaError. The
    loop had moved on to the next transaction's input, so it recovers from the last commit
    whatever the error (a retriable one included)."""


class Committer:
    """Owns the producer side of the commits: the commit on its way and the held outputs,
    and when the last commit, snapshot and publication of learners were. The producer,
    engine, handler and checkpoints are those of the current start (:meth:`attach`)."""

    def __init__(self, settings: RunSettings, observer: Observer, inputs: Inputs, instance: str,
                 check_not_deleted: Callable[[], None], on_committed: Callable[[], None],
                 give_up: Callable[[], bool]) -> None:
        self.settings = settings
        self.observer = observer
        self.inputs = inputs
        self.instance = instance  # written to worker-state: a newer instance writes its own
        self.exactly_once = settings.kafka.guarantee == "exactly_once"
        self._check_not_deleted = check_not_deleted  # while commit_transaction retries
        self._on_committed = on_committed  # a commit went through: the broker is reachable
        self._give_up = give_up  # stop waiting for the broker: told to stop while it is away
        self._producer: Any = None
        self._engine: Engine | None = None
        self._handler: Handler | None = None
        self._checkpoints: KafkaCheckpoints | LocalCheckpoints | None = None
        self._last_snapshot = 0.0
        self._snapshot_events = 0  # engine's event count at the last snapshot
        self._learners_published = 0.0  # --role trainer: when models that learn were last published
        self._last_commit = 0.0
        # input handled since the last snapshot: a snapshot is due once the interval is over,
        # also when no input came since (at least once, it is not safe from a crash until then)
        self._since_snapshot = False
        self._undelivered = 0  # at_least_once: outputs the producer could not deliver since the start
        # exactly_once: the commit of the previous transaction, on a helper thread (see commit)
        self._in_flight: kafka.InBackground | None = None
        self._in_flight_span: float | None = None  # its inputs.span_began
        self._switch_interval = sys.getswitchinterval()  # restored when no commit is on its way

    # --- each start ----------------------------------------------------------------------

    def delivery_config(self) -> dict[str, Any]:
        """The new producer's delivery callback (at least once: an output not delivered
        sends the worker back to the last snapshot); counting starts over."""
        if self.exactly_once:
            return {}
        self._undelivered = 0
        return {"on_delivery": self._on_delivery}

    def attach(self, producer: Any, engine: Engine, handler: Handler,
               checkpoints: KafkaCheckpoints | LocalCheckpoints) -> None:
        """Commit with these from now on (a start's): ``engine`` was just recovered."""
        self._producer, self._engine, self._handler = producer, engine, handler
        self._checkpoints = checkpoints
        self._snapshot_events = engine.counts["events"]
        self._last_snapshot, self._since_snapshot = time.monotonic(), False  # the start's state is stored

    def _on_delivery(self, error: KafkaError | None, _msg: Any) -> None:
        if error is not None:
            self._undelivered += 1

    # --- committing ----------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        """A commit is on its way (exactly once)."""
        return self._in_flight is not None

    def commit(self, force_snapshot: bool = False, wait: bool = False) -> bool:
        """Commit what was handled since the last commit (exactly once: one transaction; at
        least once: a snapshot when due). The transaction commits on a helper thread while
        the loop goes on with the next interval's input (:meth:`settle`), unless ``wait``.
        False: at least once, outputs were not delivered; the caller resumes from the last
        snapshot."""
        self.settle()  # the previous commit first (done by now, nearly always)
        inputs, engine, handler = self.inputs, self._engine, self._handler
        every_events = self.settings.snapshot_interval_events
        events_since = engine.counts["events"] - self._snapshot_events
        now = time.monotonic()
        self._since_snapshot = self._since_snapshot or bool(inputs.runs)
        snapshot_due = force_snapshot or (
            self._since_snapshot
            and (now - self._last_snapshot >= self.settings.kafka.snapshot_interval_s
                 or engine.snapshot_requested
                 or (every_events and events_since >= every_events))
        )
        idle_for = now - self._last_commit
        # a trainer republishes the models that serve while they learn, for its scorers
        learners = handler.learners_due(
            now - self._learners_published >= self.settings.kafka.snapshot_interval_s
        ) if self.settings.role == "trainer" else []
        if (not inputs.runs and not snapshot_due and not learners
                and not (self.exactly_once and idle_for >= HEARTBEAT_S)):
            return True
        if learners:
            handler.publish_learners(learners)
            self._learners_published = now
        saved = True
        if self.exactly_once:
            if not inputs.runs and not snapshot_due:
                # An idle instance would never learn that a newer one fenced it: touch the log.
                self._checkpoints.write_instance(self._producer, self.instance)
            self._commit_transaction(snapshot_due)
            if wait:
                self.settle()
        else:
            self._producer.poll(0)
            if snapshot_due:
                saved = self._save_local()
        inputs.runs = []
        return saved

    def _commit_transaction(self, snapshot: bool) -> None:
        producer, engine, inputs = self._producer, self._engine, self.inputs
        if snapshot:
            began = time.monotonic()
            engine.snapshot_requested = False
            meta = {"events": engine.counts["events"], "champion": engine.champion,
                    "group": self.settings.kafka.group}  # whose state: see startup.check_stored_state
            snapshot = engine.snapshot(self.settings.secret, self._checkpoints.snapshot_meta())
            self._checkpoints.write_snapshot(producer, snapshot, meta)
            self._last_snapshot, self._since_snapshot = time.monotonic(), False
            self._snapshot_events = engine.counts["events"]
            self.observer.observe_checkpoint(self._last_snapshot - began)
            log.debug("snapshot written in %.3fs", self._last_snapshot - began)
        elif inputs.runs:
            self._checkpoints.write_progress(producer, inputs.runs)
        positions = inputs.processed_offsets()
        metadata = inputs.consumer.consumer_group_metadata() if positions else None
        self._in_flight_span, inputs.span_began = inputs.span_began, None
        producer.poll(0)  # the delivery reports so far, on this thread: the commit then has few left
        sys.setswitchinterval(COMMIT_SWITCH_S)  # until settle
        self._in_flight = kafka.InBackground(lambda: self._end_transaction(producer, positions, metadata),
                                             "kafka-commit")
        self._handler.producer = HeldOutputs()  # until the next transaction has begun

    def _end_transaction(self, producer: Any, positions: list[TopicPartition], metadata: Any) -> None:
        """On the helper thread: the consumed offsets, the commit, the next begin."""
        if positions:
            kafka.call_bounded(producer.send_offsets_to_transaction, positions, metadata, OFFSETS_TIMEOUT_S)
        kafka.retrying(producer.commit_transaction, TXN_CALL_TIMEOUT_S, self._before_retry)
        producer.begin_transaction()

    def _before_retry(self) -> None:
        """Between attempts of a commit the broker did not answer: stop waiting when told
        to stop, or when a topic was deleted."""
        if self._give_up():
            raise StoppedUncommitted()
        self._check_not_deleted()

    def settle(self, wait: bool = True) -> None:
        """Collect the commit on its way, when it is done or (``wait``) once it is: the
        outputs held meanwhile go into the transaction it began. A failed commit raises
        :class:`CommitFailed`; the held outputs are dropped with it (recovery serves their
        input again)."""
        in_flight = self._in_flight
        if in_flight is None or not (wait or in_flight.done()):
            return
        while not in_flight.done():  # a commit waits for the broker as long as it is away …
            if self._give_up():  # … unless the worker is to stop: leave it to its thread
                self.abandon(wait_s=0)
                raise StoppedUncommitted()
            in_flight.wait(0.2)
        self._in_flight = None
        sys.setswitchinterval(self._switch_interval)
        held, self._handler.producer = self._handler.producer, self._producer
        try:
            in_flight.result()
        except KafkaException as e:
            raise CommitFailed(e.args[0]) from None
        self._last_commit = time.monotonic()
        self._on_committed()
        held.replay(self._producer)
        if self._in_flight_span is not None:
            self.observer.observe_transaction(self._last_commit - self._in_flight_span)

    def abandon(self, wait_s: float = TXN_CALL_TIMEOUT_S) -> None:
        """On close: wait for a commit on its way (an error stopped the loop meanwhile),
        at most ``wait_s``, whatever its outcome."""
        if self._in_flight is None:
            return
        try:
            self._in_flight.result(wait_s)
        except (KafkaException, WorkerError, TimeoutError) as e:
            log.debug("commit on close: %s", e)
        self._in_flight = None
        sys.setswitchinterval(self._switch_interval)

    def _flush(self) -> int:
        """``producer.flush`` a second at a time, for at most the transactional calls'
        timeout: a stop while the broker is away gives up rather than wait it out."""
        deadline = time.monotonic() + TXN_CALL_TIMEOUT_S
        while (left := self._producer.flush(1.0)) and time.monotonic() < deadline:
            if self._give_up():
                raise StoppedUncommitted()
        return left

    def _commit_offsets(self, positions: list[TopicPartition]) -> bool:
        """The group's offsets after an at-least-once snapshot; False when the broker
        refused or could not take them (no coordinator while it is away). The snapshot
        holds them already, and a restart resumes from it: only the group's view (its lag)
        waits for the next snapshot's commit, so the worker goes on."""
        if not positions:
            return True
        try:
            self.inputs.consumer.commit(offsets=positions, asynchronous=False)
        except KafkaException as e:
            log.warning("offsets saved in the snapshot but not committed to the group (%s): "
                        "committing them with the next snapshot", e.args[0].str())
            return False
        return True

    def _save_local(self) -> bool:
        """At-least-once checkpoint: every output delivered, then the snapshot, then the
        offsets. An output that could not be delivered sends us back to the last snapshot
        (returns False)."""
        began = time.monotonic()
        waiting = self._flush()
        if waiting or self._undelivered:
            log.warning("%d outputs not delivered, %d still waiting after %.0f s: resuming from the last "
                        "snapshot", self._undelivered, waiting, TXN_CALL_TIMEOUT_S)
            return False
        positions = self.inputs.processed_offsets()
        try:
            self._checkpoints.save(self._engine.snapshot(self.settings.secret),
                                   {(tp.topic, tp.partition): tp.offset for tp in positions})
        except OSError as e:  # a full disk: go on serving; nothing is committed without a snapshot
            log.warning("cannot write the snapshot to %s (%s): offsets not committed, retrying at the next "
                        "snapshot interval", self._checkpoints.path, e)
            self._last_snapshot = time.monotonic()
            return True
        self._since_snapshot = False
        if self._commit_offsets(positions):
            self._on_committed()
        self._last_snapshot = time.monotonic()
        self._snapshot_events = self._engine.counts["events"]
        self.observer.observe_checkpoint(self._last_snapshot - began)
        return True
