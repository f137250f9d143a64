"""`worker run`: the Kafka worker loop (ARCHITECTURE.md §4, §5).

Exactly-once: one transaction per commit interval carries the predictions, dead
letters and control messages of a batch, a progress record (which input ranges were
processed, in order), the consumed offsets and — every snapshot interval — a signed
engine snapshot. Recovery fences any older instance (``init_transactions``), loads the
last snapshot from ``worker-state`` and replays the recorded ranges with output
suppressed, so the engine is exactly where the committed output says it is.

At-least-once: no transactions; outputs are produced as they come, and every snapshot
interval the engine is saved to a local file and then the offsets are committed.

The collaborators: :mod:`~worker.runtime.startup` (the checks before anything is taken
over), :mod:`~worker.runtime.recovery` (the engine at each start),
:mod:`~worker.runtime.inputs` (the consumers, their assignment and progress) and
:mod:`~worker.runtime.committer` (the commits). The Worker wires them, runs the loop and
handles Kafka's errors.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.observer import Observer
from worker.errors import Fenced, StoppedUncommitted, WorkerError
from worker.io import kafka
from worker.runtime import startup
from worker.runtime.checkpoints import KafkaCheckpoints, read_instance
from worker.runtime.committer import CommitFailed, Committer
from worker.runtime.every import Every
from worker.runtime.handler import Handler, batch_bytes
from worker.runtime.inputs import Inputs
from worker.runtime.process import freeze_what_is_there, install_stop_signals, version_label
from worker.runtime.recovery import Recovery, StoppedRecovering, prune_previous_engine
from worker.runtime.run_settings import TXN_CALL_TIMEOUT_S, RunSettings

log = logging.getLogger("worker.run")

# Three unexplained fencings within this time: another deployment shares the group. Each
# costs ~14 s on a loaded 2-core machine (a 5 s look at worker-state, a new producer, its
# recovery, the other's next transaction), so three take ~55 s: a minute was too tight.
FENCED_WINDOW_S = 180.0
LEARN_ERRORS_EVERY_S = 60.0  # at most one warning per minute about models that could not learn


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
        # … and this one only by a commit: prefetched messages keep coming while the broker
        # is away, and a stop must not wait for it (see _give_up)
        self._away_since_commit = False
        self.engine: Engine | None = None
        self.instance = uuid.uuid4().hex
        self._status_due = Every(settings.status_interval_s)  # and one at each start (_start)
        # engine.counts["learn_errors"] / ["shadow_errors"] when last logged, and when
        self._errors_said = {"learn_errors": 0, "shadow_errors": 0}
        self._errors_due = {kind: Every(LEARN_ERRORS_EVERY_S, at_once=True) for kind in self._errors_said}
        self._unexplained_failures: list[float] = []  # when the producer failed fatally, not taken over
        self._last_consume_error = 0.0
        self._consumer = None  # events and labels (worker.obs.metrics reads its lag)
        self._control_consumer = None  # control alone, so that a command never waits behind them
        self._producer = None
        self._handler: Handler | None = None
        self._limits: startup.OutputLimits | None = None  # the outputs' size limits, read by run()
        self._inputs: Inputs | None = None  # the collaborators, wired by run()
        self._recovery: Recovery | None = None
        self._committer: Committer | None = None
        self._checkpoints: KafkaCheckpoints | None = None  # exactly_once: worker-state
        self._fresh = settings.fresh  # only the first start discards the stored state

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (finish the interval, commit, exit) or a fatal error."""
        limits = startup.check_topics(self.settings)
        install_stop_signals(self, "finishing the batch, committing, then exiting")
        config = {**self.settings.kafka.consumer_config(), "error_cb": self._on_client_error}
        self._consumer = kafka.consumer(config)
        self._control_consumer = kafka.consumer(config)  # the same group: one set of offsets
        self._wire(limits)
        try:
            if self.exactly_once and not self._fresh:
                startup.check_stored_state(self.settings)
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
            if self._committer.in_flight:  # the last interval's commit, handled as in the loop
                try:
                    self._committer.settle()
                except KafkaException as e:
                    self._on_kafka_error(e.args[0], failed_commit=isinstance(e, CommitFailed))
            if self._give_up():
                raise StoppedUncommitted()
            if self.ready:
                self._commit(force_snapshot=True, wait=True)  # a restart then has nothing to replay
            else:  # stopped while recovering from a failed commit (the broker answers): nothing in hand
                log.info("stopped while recovering: the next start resumes from the last commit")
        finally:
            self._close()
        log.info("stopped cleanly")

    def _wire(self, limits: startup.OutputLimits) -> None:
        """The collaborators, once the consumers exist."""
        self._limits = limits
        self._inputs = Inputs(self._consumer, self._control_consumer, self.topics)
        self._recovery = Recovery(self.settings, self.engine_config, limits, self._inputs)
        self._committer = Committer(self.settings, self.observer, self._inputs, self.instance,
                                    self._check_not_deleted, self._on_commit, self._give_up)

    def _start(self) -> None:
        """(Re)build the producer, recover the engine and position the consumer."""
        self.ready = False
        if self._producer is not None:
            self._producer.flush(5)
        config = self.settings.kafka.producer_config(batch_bytes(self._limits.message_bytes))
        # the producer says so too: during an outage the loop may be waiting for a commit (on
        # the helper thread, which serves this callback) and not consume, so not hear it
        config["error_cb"] = self._on_client_error
        config.update(self._committer.delivery_config())
        self._producer = kafka.producer(config)
        if self.exactly_once:
            self._producer.init_transactions(TXN_CALL_TIMEOUT_S)  # fences any older instance
            self._checkpoints = KafkaCheckpoints(self.topics.worker_state, self.settings.secrets,
                                                 self._limits.chunk_bytes[self.topics.worker_state])
            self._producer.begin_transaction()  # announce ourselves at once (see _taken_over)
            self._checkpoints.write_instance(self._producer, self.instance)
            self._producer.commit_transaction(TXN_CALL_TIMEOUT_S)
        try:
            recovered = self._recovery.recover(self._producer, self._checkpoints, self._fresh, self.observer,
                                               self._adopt_engine, lambda: self.stopping)
        except StoppedRecovering:
            return  # not ready: run() ends with "stopped while recovering"
        self._handler = recovered.handler
        self._inputs.restart()
        self._committer.attach(self._producer, recovered.engine, recovered.handler,
                               self._checkpoints if self.exactly_once else recovered.local)
        self._errors_said = {k: self.engine.counts[k] for k in self._errors_said}  # the restored: said
        self._inputs.assign(recovered.offsets)
        if self.exactly_once:
            startup.warn_unstable_outputs(self.settings, self._consumer)
            self._producer.begin_transaction()
        prune_previous_engine(self._handler, recovered.new_lineage, self.topics.models)
        self.engine.report_status()  # what it restored, signed: scorers and reports start from it
        self._handler.flush(emit=True)  # with the champion on `models`, unless it is there
        if self.exactly_once:
            self._commit(force_snapshot=True, wait=True)  # a fresh baseline: recovery never replays twice
        self.ready = True
        self._fresh = False
        freeze_what_is_there()
        log.info("ready: champion v%d, challenger %s, reading %d partitions", self.engine.champion,
                 version_label(self.engine.challenger), self._inputs.partition_count())

    def _adopt_engine(self, engine: Engine) -> None:
        """The engine being recovered is the worker's from now on (/readyz: "recovering")."""
        self.engine = engine

    def _close(self) -> None:
        self.ready = False
        if self._committer is not None:  # an error stopped the loop while a commit was on its way
            self._committer.abandon()
        try:
            if self._producer is not None:  # nothing to wait for when the broker is away
                self._producer.flush(0 if self._give_up() else 10)
        except KafkaException as e:  # a fenced producer cannot flush; nothing is lost by it
            log.debug("producer flush on close: %s", e.args[0].str())
        for consumer in (self._consumer, self._control_consumer):
            if consumer is not None:
                consumer.close()

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
        inputs, committer = self._inputs, self._committer
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or budget == 0:
                break
            committer.settle(wait=False)  # the previous interval's commit, once it is done
            # commands first: control has a consumer of its own, so an operator's command
            # is handled within a commit interval, however long the events' backlog
            self._handle(self._control_consumer.consume(num_messages=100, timeout=0))
            if inputs.leftover:
                messages, inputs.leftover = inputs.leftover, []
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
        self._warn_model_errors()
        inputs.follow_new_partitions()
        self._commit()

    def _handle(self, messages: list[Any], deadline: float | None = None, limit: int | None = None) -> int:
        """Handle ``messages`` in order; past ``deadline`` (after at least one) or after
        ``limit`` of them, keep the rest for the next transaction. Returns how many were
        taken."""
        inputs = self._inputs
        if messages and inputs.span_began is None:
            inputs.span_began = time.monotonic()
        handled = 0
        handle, runs, monotonic = self._handler.handle, inputs.runs, time.monotonic  # once per batch
        for msg in messages:
            if handled and ((deadline is not None and monotonic() >= deadline)
                            or (limit is not None and handled >= limit)):
                inputs.leftover = messages[handled:]
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

    def _report_status_when_due(self) -> None:
        """The periodic ``status_report`` (ARCHITECTURE.md §2), written with this interval's
        outputs. Not part of the engine's state: a recovery does not repeat it."""
        if self._status_due.due():
            self.engine.report_status()
            self._handler.flush(emit=True)

    def _warn_model_errors(self) -> None:
        """Say so, at most once per :data:`LEARN_ERRORS_EVERY_S` each, when models could
        not learn (labels of the wrong type, strings for a binary classifier, would
        otherwise show only in the metrics, as a model that never learns) or the challenger
        could not score (a spec that does not take the events' features)."""
        engine = self.engine
        for kind, what, last in (
            ("learn_errors", "models could not learn a labelled event", engine.learn_error),
            ("shadow_errors", "the challenger or previous champion could not score an event (the champion "
                              "served it)", engine.shadow_error),
        ):
            errors, said = engine.counts[kind], self._errors_said[kind]
            if errors > said and self._errors_due[kind].due():
                log.warning("%s %d times (%d since the state began); last: %s", what, errors - said, errors,
                            last)
                self._errors_said[kind] = errors

    def _commit(self, force_snapshot: bool = False, wait: bool = False) -> None:
        """The committer's commit; at least once, outputs that were not delivered send the
        worker back to the last snapshot."""
        if not self._committer.commit(force_snapshot=force_snapshot, wait=wait):
            self._restart()

    def _give_up(self) -> bool:
        """Told to stop while the broker is away (reported so since the last commit, and
        not answering now: a passing disconnect is no outage): exit without the last commit
        rather than wait for a broker that may not come back (a supervisor would kill us
        meanwhile)."""
        return (self.stopping and self._away_since_commit
                and not kafka.answers(self._control_consumer, self.topics.control, timeout_s=1.0))

    def _on_commit(self) -> None:
        """A commit went through: the broker is reachable again."""
        self.broker_unreachable = self._away_since_commit = False

    def _check_not_deleted(self) -> None:
        """A topic deleted while running: stop (exit 2) rather than wait in vain."""
        startup.check_topics_not_deleted(self.settings)

    # --- errors --------------------------------------------------------------------------

    def _on_kafka_error(self, error: KafkaError, failed_commit: bool = False) -> None:
        if self._committer.in_flight:  # a commit on its way: its outcome first
            try:
                self._committer.settle()
            except KafkaException as e:  # the commit failed, or so did its held outputs
                error, failed_commit = e.args[0], isinstance(e, CommitFailed)
        if error.code() == kafka.STUCK:
            log.warning("%s: abandoning the producer, recovering with a new one", error.str())
            self._producer, self.ready = None, False  # a call is still blocked inside it: let it be
            # the broker did not answer, perhaps before the client noticed it gone: a stop
            # now asks it (_give_up) rather than take this for a clean stop
            self.broker_unreachable = self._away_since_commit = True
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
        reader = startup.state_reader(self.settings)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                if read_instance(reader, self.topics.worker_state) != self.instance:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)
        except KafkaException:
            return True  # cannot tell: stopping is the safe side
        finally:
            reader.close()

    def _restart(self) -> None:
        self._inputs.runs = []
        while not self.stopping:
            if not kafka.answers(self._control_consumer, self.topics.control):
                self.broker_unreachable = self._away_since_commit = True
                continue
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
            self.broker_unreachable = self._away_since_commit = True

    def _on_consume_error(self, error: KafkaError) -> None:
        now = time.monotonic()
        if now - self._last_consume_error >= 5.0:  # errors repeat with every fetch
            self._last_consume_error = now
            if error.code() in kafka.UNKNOWN_TOPIC:
                self._check_not_deleted()
            log.warning("Kafka: %s (waiting for the broker)", error.str())
