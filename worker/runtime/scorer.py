"""`worker run --role scorer`: serve a share of the events (ARCHITECTURE.md §5).

Scorers are a consumer group (``<group>.scorers``) over ``events``: Kafka spreads the
partitions over however many are running and moves them when one comes or goes. Each
serves the current champion and writes its predictions exactly once: one transaction per
commit interval with the predictions, the dead letters and the consumed offsets, sent
with the group's metadata (KIP-447), so a scorer that lost its partitions in a
rebalance can no longer commit them. Its ``transactional.id`` is ``worker-<group>-
scorer-<scorer id>``: a scorer restarted with the same id aborts what its previous run
left open at once, instead of holding readers back until the transaction times out.

What to serve is what the latest lifecycle event on ``control`` says: the champion (before
any, version 1), the challenger and the traffic split. Under a split the challenger
serves its share of entities, chosen by the same sticky hash as a single worker's
(:mod:`worker.core.split`). Models come from ``models``, signed (:mod:`worker.io.models`).
The trainer (``--role trainer``) publishes version 1 at its start and again while it
learns during the warm-up, and the challenger while a split serves it, again as it
learns; a scorer loads every new publication of the versions it serves, so scorers serve
from the start, as a single worker does. A lifecycle event reaches the scorers as soon as
they read it, so for a moment they may still serve the previous models; every prediction
names the version that made it. Scorers compute no shadow score: the trainer scores both
models on every event, and keeps the metrics per arm.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition

from worker.core.metrics import predict_from_proba
from worker.core.observer import Observer
from worker.core.split import serves_challenger
from worker.core.types import Event, Prediction
from worker.errors import (
    BadInputError,
    ConfigError,
    Fenced,
    SignatureError,
    SnapshotError,
    StoppedUncommitted,
)
from worker.io import kafka
from worker.io.codec import decode_event
from worker.io.lifecycle import Signed, latest_lifecycle, lifecycle_of, newer
from worker.io.models import Catalog, read_catalog, read_models
from worker.io.topics import (
    DEFAULT_MESSAGE_BYTES,
    check_not_deleted,
    check_shapes,
    message_limits,
    require_topics,
)
from worker.runtime.every import Every
from worker.runtime.handler import DeadLetters, batch_bytes, produce_prediction
from worker.runtime.process import install_stop_signals, version_label
from worker.runtime.run_settings import OFFSETS_TIMEOUT_S, PARTITIONS_CHECK_S, TXN_CALL_TIMEOUT_S, RunSettings

log = logging.getLogger("worker.scorer")

SESSION_TIMEOUT_MS = 10_000  # the group's session timeout for scorers (see Scorer.run)
RETRY_S = 1.0  # between attempts to load a model while the broker does not answer
CHALLENGER_ERRORS_EVERY_S = 60.0  # at most one warning a minute about a challenger that cannot score


@dataclass(frozen=True)
class Served:
    """A model a scorer serves, and the publication (manifest) it was loaded from."""

    version: int
    model: Any
    manifest: bytes | None


class ModelFeed:
    """Follows ``control`` for what to serve (champion, challenger, split), and ``models``
    for their models.

    Both are followed by consumers of their own, read without waiting on every poll; the
    models of versions older than the newest served, but those served, are forgotten as
    they come (a rollback to one of those reads the topic again), so the memory holds
    about two models.
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.champion: Served | None = None
        self.challenger: Served | None = None  # only under a split
        self.split = 0.0
        self._wanted: Signed | None = None  # the latest lifecycle event read, when it was signed
        self._next_try = 0.0  # after a broker error: when to try loading again
        self._unreachable = False  # the last attempt to load failed for want of a broker
        self._failed: dict[int, bytes | None] = {}  # version → the manifest it could not be loaded with
        self.champion_error: SnapshotError | None = None  # why the wanted champion is not served
        self._catalog = Catalog()
        self._trusted = settings.secrets if settings.require_signed_commands else None  # lifecycle signers
        config = settings.kafka.consumer_config()
        group = settings.kafka.group
        self._control = kafka.consumer({**config, "group.id": f"{group}.scorers-control"})
        self._models = kafka.consumer({**config, "group.id": f"{group}.scorers-models"})
        self._reader_config = {**config, "group.id": f"{group}.scorers-reader"}

    def start(self) -> None:
        topics = self.settings.kafka.topics
        reader = kafka.reader(self._reader_config)
        try:
            # the ends first: what comes after them is read twice, which is harmless
            control_end = kafka.bounds(reader, topics.control)[1]
            self._wanted = latest_lifecycle(reader, topics.control, self._trusted)
            models_end = kafka.bounds(reader, topics.models)[1]
            champion, challenger, _ = self._what_to_serve()
            self._catalog = read_catalog(reader, topics.models, chunks_of={champion, challenger} - {None})
        finally:
            reader.close()
        self._control.assign([TopicPartition(topics.control, 0, control_end)])
        self._models.assign([TopicPartition(topics.models, 0, models_end)])
        self._load_when_due()

    def poll(self) -> None:
        """Take what came on control and models since the last call; switch models when
        the lifecycle changed (and their models are published) or a model was published
        anew."""
        for msg in self._control.consume(num_messages=100, timeout=0):
            if not msg.error():
                self._wanted = newer(self._wanted, lifecycle_of(msg.value(), self._trusted))
        for msg in self._models.consume(num_messages=100, timeout=0):
            if not msg.error():
                self._catalog.add(msg.key(), msg.value())
        self._load_when_due()

    def pick(self, event: Event) -> tuple[str, Served]:
        """The arm that serves ``event`` and its model: the challenger for its share of
        entities while a split is set and its model is loaded, else the champion."""
        challenger = self.challenger
        if challenger is not None and serves_challenger(event.key, self.split, event.id):
            return "challenger", challenger
        return "champion", self.champion

    def _what_to_serve(self) -> tuple[int, int | None, float]:
        """(champion, challenger or None, split) as the control log says last; before any
        lifecycle event, version 1 alone (the trainer publishes it during its warm-up too)."""
        if self._wanted is None:
            return 1, None, 0.0
        wanted = self._wanted[0]
        split = wanted.split or 0.0  # None: a trainer of a release that did not say
        return wanted.champion, wanted.challenger if split else None, split

    def _load_when_due(self) -> None:
        if time.monotonic() < self._next_try:
            return
        if self._wanted is None and not self._catalog.published(1):
            self.champion_error = SnapshotError("no trainer has published version 1 yet")
            return
        champion, challenger, split = self._what_to_serve()
        self.champion = self._load(champion, self.champion, "champion")
        if split != self.split:
            log.info("traffic split: %g %% of entities for the challenger", split)
            self.split = split
        self.challenger = self._load(challenger, self.challenger, "challenger") if challenger else None
        versions = {served.version for served in (self.champion, self.challenger) if served is not None}
        if versions:
            self._catalog.keep_chunks_of(versions)
        if self._failed:  # only what is still wanted
            self._failed = {v: m for v, m in self._failed.items() if v in (champion, challenger)}

    def _load(self, version: int, served: Served | None, role: str) -> Served | None:
        """``served`` when it is ``version``'s latest publication, else that one loaded.
        When it cannot be loaded yet: ``served`` still, unless it is a challenger that was
        replaced (its share goes to the champion meanwhile)."""
        manifest = self._catalog.manifest(version)
        if served is not None and served.version == version and served.manifest == manifest:
            return served  # serving that very publication
        keep = served is not None and (role == "champion" or served.version == version)
        fallback = served if keep else None  # never a challenger that was replaced
        if version in self._failed and self._failed[version] == manifest:
            return fallback  # that publication could not be loaded: wait for a new one
        try:
            if manifest is None:
                raise SnapshotError(f"version {version} is not on the models topic yet")
            catalog = self._catalog
            if not catalog.has_chunks(version):  # an older version, forgotten here: read the topic again
                catalog = read_models(self._reader_config, self.settings.kafka.topics.models,
                                      chunks_of=(version,))
            model = catalog.load(version, self.settings.secrets)
        except KafkaException as e:  # no broker: try again in a while (said once per outage)
            self._next_try = time.monotonic() + RETRY_S
            log.log(logging.DEBUG if self._unreachable else logging.WARNING, "%s v%d cannot be loaded: %s; "
                    "retrying every %g s", role, version, e.args[0].str(), RETRY_S)
            self._unreachable = True
            return fallback
        except SnapshotError as e:  # not published yet, not ours: until it is published anew
            self._unreachable = False
            self._failed[version] = manifest
            if role == "champion":
                self.champion_error = e
            log.log(logging.ERROR if isinstance(e, SignatureError) else logging.INFO,
                    "%s v%d cannot be served yet: %s", role, version, e)
            return fallback
        self._unreachable = False
        self._failed.pop(version, None)
        if role == "champion":
            self.champion_error = None
        learned = orjson.loads(manifest).get("learned")
        share = f" to {self.split:g} % of entities" if role == "challenger" else ""
        was = served.version if served else None
        # a new publication of the model served (it learns): every snapshot interval, so quieter
        log.log(logging.DEBUG if was == version else logging.INFO, "serving %s v%d%s (was %s), learned from "
                "%s labelled events", role, version, share, version_label(was), learned)
        return Served(version, model, manifest)

    def close(self) -> None:
        self._control.close()
        self._models.close()


class Scorer:
    """One member of the scorer group: consume events, serve champion (and challenger), commit."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.stopping = False
        self.ready = False
        self.feed = ModelFeed(settings)
        self.observer = Observer()  # worker.obs.server.serve() swaps in the Prometheus one
        self.engine = None  # none here: the /readyz and /metrics helpers look for one
        self.dead_letters = DeadLetters(self.topics.dlq)
        self._handled = 0  # messages in the open transaction
        self._span_began = 0.0  # when the first of them was served
        self._topics_checked = 0.0  # when an unknown-topic error was last checked (_serve)
        # from the outputs' max.message.bytes, read in _check
        self._prediction_bytes = DEFAULT_MESSAGE_BYTES
        self._batch_bytes: int | None = None
        self._producer: Any = None
        self._consumer: Any = None
        self._gave_up = False  # stopped while the broker was away: no commit, no flush on close
        self._challenger_errors = 0  # events the challenger could not score since the last warning
        self._challenger_errors_due = Every(CHALLENGER_ERRORS_EVERY_S, at_once=True)

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (commit, leave the group, exit) or a fatal error."""
        self._check()
        install_stop_signals(self, "committing, then leaving the group")
        kafka_settings, group = self.settings.kafka, self.settings.kafka.group
        try:
            self._producer = self._new_producer()
        except KafkaException as e:
            self.feed.close()
            raise kafka.start_error(e.args[0]) from None
        try:
            self.feed.start()
            while self.feed.champion is None and not self.stopping:
                if isinstance(self.feed.champion_error, SignatureError):
                    raise ConfigError(f"cannot serve: {self.feed.champion_error} (the champion on "
                                      f"{self.topics.models}); a scorer needs the trainer's --secret, "
                                      "and after a rotation the old one as --previous-secret")
                time.sleep(0.2)  # no trainer has published version 1 yet (polling, not sync)
                self.feed.poll()
            if self.stopping:
                return
            # Partitions added to `events` reach the group at a metadata refresh: every 5 s
            # rather than librdkafka's 5 minutes (a --kafka-config setting wins).
            # A scorer that died (kill -9, a crash) holds its partitions until its session
            # times out, even when it comes back at once: 10 s rather than librdkafka's 45.
            # Cooperative rebalancing: the others keep serving theirs meanwhile (an eager
            # rebalance took every partition from every scorer until that timeout).
            config = {"topic.metadata.refresh.interval.ms": int(PARTITIONS_CHECK_S * 1000),
                      "session.timeout.ms": SESSION_TIMEOUT_MS,
                      "partition.assignment.strategy": "cooperative-sticky",
                      **kafka_settings.consumer_config(), "group.id": f"{group}.scorers"}
            self._consumer = kafka.consumer(config)
            self._consumer.subscribe([self.topics.events], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
            self._producer.begin_transaction()
            self.ready = True
            log.info("ready: scorer %s serving champion v%d", self.settings.scorer_id,
                     self.feed.champion.version)
            while not self.stopping:
                self._step()
            self._commit()
        finally:
            self._close()
        log.info("stopped cleanly")

    @property
    def waiting_for(self) -> str | None:
        """Why it serves nothing yet (for ``/readyz``), once it looked for its champion."""
        error = self.feed.champion_error
        return None if self.ready or error is None else f"waiting for the champion: {error}"

    def serving(self) -> dict[str, Any]:
        """The versions it serves and the split, for the metrics (read from their thread)."""
        champion, challenger = self.feed.champion, self.feed.challenger
        return {"champion": champion.version if champion else None,  # the split in effect:
                "challenger": challenger.version if challenger else None,  # none without a challenger
                "split_percent": self.feed.split if challenger else 0.0}

    def _new_producer(self) -> Any:
        """A transactional producer under this scorer's id: its ``init_transactions``
        aborts what an earlier producer with the id left open (a previous run's, or this
        run's own after a failure) and fences that producer."""
        txn_id = f"worker-{self.settings.kafka.group}-scorer-{self.settings.scorer_id}"
        config = self.settings.kafka.producer_config(self._batch_bytes)
        producer = kafka.producer({**config, "transactional.id": txn_id})
        producer.init_transactions(TXN_CALL_TIMEOUT_S)
        return producer

    def _check(self) -> None:
        names = self.topics
        needed = [names.events, names.predictions, names.control, names.models, names.dlq]
        admin = self.settings.kafka.admin_config()
        require_topics(admin, needed)
        check_shapes(admin, names, only=(names.control, names.models))  # the ordered logs it reads
        limits = message_limits(admin, [names.predictions, names.dlq])
        self._prediction_bytes, self.dead_letters.max_bytes = limits[names.predictions], limits[names.dlq]
        self._batch_bytes = batch_bytes(limits)

    def _step(self) -> None:
        deadline = time.monotonic() + self.settings.kafka.commit_interval_ms / 1000
        while not self.stopping and (remaining := deadline - time.monotonic()) > 0:
            self.feed.poll()
            messages = self._consumer.consume(self.settings.max_batch, timeout=min(remaining, 0.01))
            began = time.monotonic()
            try:
                for msg in messages:
                    self._serve(msg)
            except KafkaException as e:  # produce() in a failed transaction: the rest is served again
                self._recover(e.args[0])
                self._handled = 0
                self._producer.begin_transaction()
                return
            self.observer.observe_batch(time.monotonic() - began, len(messages))
        self._commit()

    def _serve(self, msg: Message) -> None:
        if msg.error():
            if msg.error().code() in kafka.UNKNOWN_TOPIC and time.monotonic() - self._topics_checked >= 5.0:
                self._topics_checked = time.monotonic()  # errors repeat with every fetch
                self._check_not_deleted()
            log.warning("Kafka: %s", msg.error().str())
            return
        if not self._handled:
            self._span_began = time.monotonic()  # the first input of the open transaction
        self._handled += 1
        position = (msg.topic(), msg.partition(), msg.offset())
        try:
            event = decode_event(msg.value(), msg.key(), position, self.settings.limits)
            arm, served, proba = self._score(event)
            prediction = Prediction(event.id, arm, served.version, predict_from_proba(proba), proba,
                                    event.ts, event.key)
            produce_prediction(self._producer, self.topics.predictions, prediction, self._prediction_bytes)
        except BadInputError as e:
            self.dead_letters.write(self._producer, msg, str(e))
            self.observer.dead_letter()
            return
        self.observer.event_scored(arm)

    def _commit(self) -> None:
        """Commit the open transaction with the consumed offsets, and open the next."""
        if not self._handled or self._consumer is None or self._gave_up:
            return
        positions = [tp for tp in self._consumer.position(self._consumer.assignment()) if tp.offset >= 0]
        try:
            kafka.call_bounded(self._producer.send_offsets_to_transaction, positions,
                               self._consumer.consumer_group_metadata(), OFFSETS_TIMEOUT_S)
            kafka.retrying(self._producer.commit_transaction, TXN_CALL_TIMEOUT_S, self._before_retry)
        except KafkaException as e:
            self._recover(e.args[0])
        else:
            self.observer.observe_transaction(time.monotonic() - self._span_began)
        self._handled = 0
        self._producer.begin_transaction()

    def _score(self, event: Event) -> tuple[str, Served, dict]:
        """The arm the split picks, its model and its probabilities; the champion's when the
        challenger cannot score the event (as a single worker serves it), and only the
        champion's error makes the event bad."""
        arm, served = self.feed.pick(event)
        if arm == "challenger":
            try:
                return arm, served, served.model.predict_proba_one(event.features)
            except Exception as e:  # noqa: BLE001 - the champion serves it
                self._challenger_failed(served.version, e)
                arm, served = "champion", self.feed.champion
        try:
            return arm, served, served.model.predict_proba_one(event.features)
        except Exception as e:  # noqa: BLE001 - a model error makes this event bad, not the scorer
            raise BadInputError(f"model raised {type(e).__name__}: {e}") from e

    def _challenger_failed(self, version: int, error: Exception) -> None:
        """Say, at most once a minute, that the challenger could not score (a spec that does
        not take the events' features): the champion serving its share hides it otherwise."""
        self._challenger_errors += 1
        if self._challenger_errors_due.due():
            log.warning("the challenger v%d could not score an event %d times (the champion served them); "
                        "last: %s: %s", version, self._challenger_errors, type(error).__name__, error)
            self._challenger_errors = 0

    def _before_retry(self) -> None:
        """Between attempts of a commit the broker did not answer: stop waiting when told
        to stop (a supervisor would kill us meanwhile), or when a topic was deleted."""
        if self.stopping:
            self._stop_uncommitted()
        self._check_not_deleted()

    def _stop_uncommitted(self) -> None:
        """Stop without the last commit; closing then waits for nothing either."""
        self._gave_up = True
        raise StoppedUncommitted("what was served since the last commit is served again by the scorer "
                                 "that takes these partitions")

    def _check_not_deleted(self) -> None:
        written_or_read = [self.topics.events, self.topics.predictions, self.topics.dlq]
        check_not_deleted(self.settings.kafka.admin_config(), written_or_read)

    def _recover(self, error: Any) -> None:
        """After a failed transaction (a broker restart, a call stuck in librdkafka, an
        abort that failed too): a new producer, whose ``init_transactions`` aborts the
        failed transaction, and the consumer back to its last commit, so what that
        transaction held is served again. Retried until the broker answers."""
        self._raise_if_fenced(error)
        log.warning("transaction failed (%s): new producer, serving again from the last commit", error.str())
        while not self.stopping:
            if not kafka.answers(self._consumer, self.topics.events):
                continue
            try:
                self._producer = self._new_producer()  # the old one is dropped: a call may still block it
                self._rewind()
                return
            except KafkaException as e:
                self._raise_if_fenced(e.args[0])
                log.warning("recovery failed (%s): waiting for the broker, retrying", e.args[0].str())
                time.sleep(RETRY_S)
        self._stop_uncommitted()

    def _raise_if_fenced(self, error: Any) -> None:
        if error.code() in kafka.FENCED:
            raise Fenced(f"fenced: another scorer with id {self.settings.scorer_id!r} took over (give each "
                         "scorer its own --scorer-id), or the broker aborted a transaction of ours that "
                         "outlived transaction_timeout_ms; exiting") from None

    def _rewind(self) -> None:
        """Back to the committed offsets (the beginning where none was committed yet):
        what the aborted transaction held is served again."""
        assigned = self._consumer.assignment()
        if assigned:
            for tp in self._consumer.committed(assigned, timeout=TXN_CALL_TIMEOUT_S):
                self._consumer.seek(tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition,
                                                                             OFFSET_BEGINNING))

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Say which partitions it takes on (cooperative: only the added ones)."""
        if partitions:
            log.info("serving partitions %s", ", ".join(str(tp.partition) for tp in partitions),
                     extra={"context": {"topic": self.topics.events}})

    def _on_revoke(self, _consumer: Any, _partitions: list[TopicPartition]) -> None:
        """Partitions move to another scorer: commit what was served from them first."""
        self._commit()

    def _on_lost(self, _consumer: Any, _partitions: list[TopicPartition]) -> None:
        """Partitions were taken without a revoke (a session timeout): their offsets can no
        longer be committed by us, so abort; another scorer serves them again."""
        log.warning("lost partitions %s: aborting the open transaction", _partitions)
        try:
            self._producer.abort_transaction(TXN_CALL_TIMEOUT_S)
        except KafkaException as e:
            self._recover(e.args[0])
        self._handled = 0
        self._producer.begin_transaction()

    def _close(self) -> None:
        self.ready = False
        if self._consumer is not None:
            self._consumer.close()
        self.feed.close()
        try:
            self._producer.flush(0 if self._gave_up else 10)
        except KafkaException as e:
            log.debug("producer flush on close: %s", e.args[0].str())
