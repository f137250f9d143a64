"""Recovery of the engine at each start (ARCHITECTURE.md §4): from the last snapshot on
``worker-state`` and the input ranges recorded since, replayed with output suppressed
(exactly once), or from the local snapshot file (at least once); and a new engine's
pruning of the previous engine's models from the ``models`` topic."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.observer import Observer
from worker.errors import SignatureError, SnapshotError
from worker.io import kafka
from worker.io.lifecycle import latest_lifecycle
from worker.io.models import Catalog, read_models
from worker.runtime.checkpoints import KafkaCheckpoints, LocalCheckpoints, Run
from worker.runtime.handler import Handler
from worker.runtime.inputs import Inputs
from worker.runtime.process import version_label
from worker.runtime.run_settings import TXN_CALL_TIMEOUT_S, RunSettings
from worker.runtime.startup import OutputLimits, state_reader, wrong_secret

log = logging.getLogger("worker.run")


class StoppedRecovering(Exception):
    """A stop came while the input since the last snapshot was being replayed: nothing of
    this start is in hand, so the worker can exit at once (the next start replays again)."""


@dataclass(frozen=True)
class Recovered:
    """What a recovery rebuilt, and where the inputs continue."""

    engine: Engine
    handler: Handler
    offsets: dict[tuple[str, int], int]
    new_lineage: bool  # the engine was not restored: its versions restart at v1
    local: LocalCheckpoints | None  # at least once: the local snapshot file


class ModelsTopic:
    """Reads the ``models`` topic: its catalog, and a former champion's model."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings

    def catalog(self, chunks_of: tuple[int, ...] = ()) -> Catalog:
        kafka_settings = self.settings.kafka
        config = {**kafka_settings.consumer_config(), "group.id": f"{kafka_settings.group}.models-reader"}
        return read_models(config, kafka_settings.topics.models, chunks_of=chunks_of)

    def published_model(self, version: int) -> Any:
        """A former champion's model from the `models` topic (None if it was never
        there), for a rollback to a version the engine no longer keeps in memory."""
        catalog = self.catalog(chunks_of=(version,))
        if catalog.published(version) or catalog.pruned(version):
            return catalog.load(version, self.settings.secrets)  # says when it was pruned
        return None


class Recovery:
    """Rebuilds the engine and its handler at each start; keeps nothing between starts."""

    def __init__(self, settings: RunSettings, engine_config: EngineConfig, limits: OutputLimits,
                 inputs: Inputs) -> None:
        self.settings = settings
        self.engine_config = engine_config
        self.limits = limits
        self.inputs = inputs
        self.topics = settings.kafka.topics
        self.models = ModelsTopic(settings)

    def recover(self, producer: Any, checkpoints: KafkaCheckpoints | None, fresh: bool,
                observer: Observer, on_engine: Callable[[Engine], None],
                stopping: Callable[[], bool] = lambda: False) -> Recovered:
        """Rebuild the engine (from ``checkpoints``: exactly once; else from the local
        file); ``fresh`` ignores the stored state. ``on_engine`` is given the engine as
        soon as it exists, before its input is replayed (/readyz then says "recovering").
        Raises :class:`StoppedRecovering` when ``stopping()`` turns true during the replay."""
        reader = state_reader(self.settings)
        try:
            if checkpoints is not None:
                recovered = self._from_kafka(reader, checkpoints, producer, fresh, on_engine, stopping)
            else:
                recovered = self._from_file(reader, producer, fresh, on_engine)
        finally:
            reader.close()
        # Observed from here on: replayed input was counted when it was first processed.
        recovered.engine.observer = observer
        if recovered.new_lineage:  # a new engine (--fresh, or no stored state) answers no command
            # sent to the one it replaces, whose group offsets may remain (ARCHITECTURE.md §2)
            offsets = {tp: offset for tp, offset in recovered.offsets.items() if tp[0] != self.topics.control}
            recovered = Recovered(recovered.engine, recovered.handler, offsets, recovered.new_lineage,
                                  recovered.local)
        return recovered

    def _from_kafka(self, reader: Any, checkpoints: KafkaCheckpoints, producer: Any, fresh: bool,
                    on_engine: Callable[[Engine], None], stopping: Callable[[], bool]) -> Recovered:
        loaded = checkpoints.load(reader)
        engine, handler, new_lineage = self._new_engine(loaded.snapshot, producer, fresh, on_engine)
        runs: list[Run] = [] if fresh else loaded.runs
        began = time.monotonic()
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, partition, first, last in runs:
            low, high = spans.get((topic, partition), (first, last))
            spans[topic, partition] = (min(low, first), max(high, last))
        self._warn_deleted_spans(reader, spans)
        messages = kafka.read_spans(reader, spans) if spans else {}
        for topic, partition, first, last in runs:  # a run: one interval's input of one partition
            if stopping():
                raise StoppedRecovering()
            stored = messages[topic, partition]
            for offset in range(first, last + 1):
                msg = stored.get(offset)  # gaps: transaction markers, aborted messages
                if msg is not None:
                    handler.handle(msg, emit=False)
        if runs:
            log.info("recovered: replayed %d input ranges in %.1fs", len(runs), time.monotonic() - began)
        offsets = self.inputs.committed()
        warn_moved_back(engine.positions, offsets)
        return Recovered(engine, handler, offsets, new_lineage, None)

    def _warn_deleted_spans(self, reader: Any, spans: dict[tuple[str, int], tuple[int, int | None]]) -> None:
        """Input to replay (from ``first`` to ``last``; None: on from ``first``) that
        retention deleted first (the worker was down longer than the topic keeps its
        messages) cannot be replayed: say so, the state lacks it."""
        for (topic, partition), (first, last) in spans.items():
            tp = TopicPartition(topic, partition)
            low, _ = reader.get_watermark_offsets(tp, timeout=TXN_CALL_TIMEOUT_S, cached=False)
            if first < low:
                log.warning("%s[%d] offsets %d-%d are gone (deleted by retention) and cannot be replayed: "
                            "the recovered state lacks what they held", topic, partition, first,
                            low - 1 if last is None else min(last, low - 1))

    def _from_file(self, reader: Any, producer: Any, fresh: bool,
                   on_engine: Callable[[Engine], None]) -> Recovered:
        settings = self.settings
        local = LocalCheckpoints(settings.state_dir, settings.kafka.group, settings.secrets)
        local.check_writable()
        try:
            saved = None if fresh else local.load()
        except SignatureError as e:
            raise wrong_secret(settings, e, "stopping") from None
        except SnapshotError as e:  # truncated, empty, not a snapshot
            raise SnapshotError(f"cannot restore {local.path}: {e}; move it away or start with --fresh to "
                                "start over (its state is lost: input resumes from the group's committed "
                                "offsets)") from None
        if saved:  # what the previous run handled after its offsets but retention deleted since
            self._warn_deleted_spans(reader, {tp: (offset, None) for tp, offset in saved[1].items()
                                              if tp[0] != self.topics.control})
        engine, handler, new_lineage = self._new_engine(saved[0] if saved else None, producer, fresh,
                                                        on_engine)
        offsets = saved[1] if saved else self.inputs.committed()
        return Recovered(engine, handler, offsets, new_lineage, local)

    def _new_engine(self, snapshot: bytes | None, producer: Any, fresh: bool,
                    on_engine: Callable[[Engine], None]) -> tuple[Engine, Handler, bool]:
        """The engine restored from ``snapshot`` (a new one without), and its handler."""
        new_lineage = snapshot is None or fresh
        if not new_lineage:
            try:
                engine = Engine.restore(snapshot, self.settings.secrets, self.engine_config)
            except SignatureError as e:
                raise wrong_secret(self.settings, e, "stopping") from None
            except SnapshotError as e:
                raise SnapshotError(f"the stored state cannot be restored: {e} (after a secret rotation, "
                                    "pass the old secret as --previous-secret; --fresh starts over)") from e
            log.info("restored engine: champion v%d, challenger %s, %d events seen", engine.champion,
                     version_label(engine.challenger), engine.counts["events"])
        else:
            engine = Engine(self.engine_config)
            log.info("new engine%s", " (--fresh: stored state ignored)" if fresh else "")
        on_engine(engine)
        engine.model_source = self.models.published_model
        catalog = self.models.catalog()
        on_topic = {m["version"]: m["chunks"] for m in catalog.manifests()}
        settings = self.settings
        handler = Handler(engine, producer, self.topics, limits=settings.limits,
                          secrets=settings.secrets,
                          require_signed_commands=settings.require_signed_commands,
                          command_max_age_s=settings.command_max_age_s,
                          chunk_bytes=self.limits.chunk_bytes[self.topics.models],
                          serve=settings.role == "all",
                          models_retain=settings.models_retain,
                          message_bytes=self.limits.message_bytes,
                          models_on_topic=on_topic,
                          learning_on_topic=catalog.learning())
        handler.signing.seen(self._last_signed_at())
        return engine, handler, new_lineage

    def _last_signed_at(self) -> float:
        """When the last lifecycle event on control that this worker's secrets verify was
        signed: its own go after it, so scorers follow them even when this host's clock is
        behind the previous instance's."""
        reader = state_reader(self.settings)
        try:
            latest = latest_lifecycle(reader, self.topics.control, self.settings.secrets, warn=False)
        finally:
            reader.close()
        return latest[1] if latest is not None else -math.inf


def warn_moved_back(processed: dict[tuple[str, int], int], committed: dict[tuple[str, int], int]) -> None:
    """Inputs resume from the group's committed offsets, which commit with the state: one
    at or before an offset the restored state has processed was moved back by hand (to
    serve input again). Say what that does, since the state has learned that input already."""
    for (topic, partition), offset in sorted(committed.items()):
        last = processed.get((topic, partition))
        if last is not None and offset <= last:
            log.warning("%s[%d]: the group's committed offset %d is at or before %d, the last offset "
                        "the restored state has processed: were the offsets moved back by hand? Offsets "
                        "%d-%d are processed again: predicted again and their labels learned a second time; "
                        "an event among them still waiting for its label is dead-lettered as a duplicate",
                        topic, partition, offset, last, offset, last)


def prune_previous_engine(handler: Handler, new_lineage: bool, models_topic: str) -> None:
    """At start, a new engine first prunes the previous engine's versions from `models`
    (its own v1 must not be taken for theirs); the status report that follows says on
    control that v1 is champion now, and publishes it (:meth:`Handler.flush`)."""
    stale = sorted(handler.models_on_topic) if new_lineage else []
    if stale:
        log.warning("new engine: pruning the %d versions of the previous engine from %s (v%d-v%d)",
                    len(stale), models_topic, stale[0], stale[-1])
        handler.prune_models(stale)
