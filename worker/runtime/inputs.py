"""The worker's inputs: its two consumers (events and labels; control alone, so that a
command never waits behind them), their assignment, and what the open transaction has
taken from them: the progress record, the messages left for the next transaction, and
so the offsets it commits (ARCHITECTURE.md §4)."""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from worker.errors import ConfigError
from worker.io import kafka
from worker.runtime.run_settings import PARTITIONS_CHECK_S, TXN_CALL_TIMEOUT_S
from worker.settings import TopicNames

log = logging.getLogger("worker.run")


class Inputs:
    """Filled by the loop as it handles messages, read and emptied by the commit."""

    def __init__(self, consumer: Any, control_consumer: Any, topics: TopicNames) -> None:
        self.consumer = consumer  # events and labels
        self.control_consumer = control_consumer  # control
        self.topics = topics
        # the progress record of the open transaction: [topic, partition, first, last] runs
        self.runs: list[list[Any]] = []
        self.leftover: list[Any] = []  # consumed, not yet handled: the next transaction's
        self.span_began: float | None = None  # first message handled in this transaction
        self._assigned_at: dict[tuple[str, int], int] = {}  # the offsets assign() positioned at
        self._partitions_checked = time.monotonic()

    def restart(self) -> None:
        """Forget what the open transaction took: recovery starts from the last commit."""
        self.leftover, self.span_began = [], None

    def all_partitions(self) -> list[TopicPartition]:
        """Every partition of the inputs; none of ``labels`` while it does not exist."""
        out = []
        for topic in (self.topics.events, self.topics.labels, self.topics.control):
            try:
                partitions = kafka.partitions_of(self.consumer, topic)
            except ConfigError:
                if topic == self.topics.labels:
                    continue
                raise
            out += [TopicPartition(topic, p) for p in partitions]
        return out

    def committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets of every input partition."""
        return kafka.committed(self.consumer, self.all_partitions())

    def assign(self, offsets: dict[tuple[str, int], int]) -> None:
        """Inputs resume where the committed state ends; with no state, events and labels
        start at the beginning and control at its end (ARCHITECTURE.md §2).

        Control's end is looked up now, not left to the consumer as OFFSET_END: that is
        resolved whenever the consumer gets to it, and a command sent in between (right
        after the worker said it was ready, on a busy machine) would be skipped."""
        inputs, control = [], []
        for tp in self.all_partitions():
            offset = offsets.get((tp.topic, tp.partition))
            if tp.topic == self.topics.control:
                if offset is None:
                    _, offset = self.consumer.get_watermark_offsets(tp, timeout=TXN_CALL_TIMEOUT_S,
                                                                    cached=False)
                control.append(TopicPartition(tp.topic, tp.partition, offset))
            else:
                inputs.append(TopicPartition(tp.topic, tp.partition,
                                             OFFSET_BEGINNING if offset is None else offset))
        self.consumer.assign(inputs)
        self.control_consumer.assign(control)
        self._assigned_at = {(tp.topic, tp.partition): tp.offset
                             for tp in (*inputs, *control) if tp.offset >= 0}

    def partition_count(self) -> int:
        return len(self.consumer.assignment()) + len(self.control_consumer.assignment())

    def follow_new_partitions(self) -> None:
        """Read the partitions added to ``events`` or ``labels`` since the assignment (a
        topic grown with ``kafka-topics --alter``, or ``labels`` created), from their
        beginning. A manual assignment does not follow a topic's growth: without this,
        their messages would wait for the next restart. Checked every ``PARTITIONS_CHECK_S``."""
        if time.monotonic() - self._partitions_checked < PARTITIONS_CHECK_S:
            return
        self._partitions_checked = time.monotonic()
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        added = []
        for topic in (self.topics.events, self.topics.labels):
            try:
                partitions = kafka.partitions_of(self.consumer, topic, timeout_s=1.0)
            except (KafkaException, ConfigError):
                continue  # the broker is away (the loop says so) or the topic is gone: next time
            added += [TopicPartition(topic, p, OFFSET_BEGINNING)
                      for p in partitions if (topic, p) not in assigned]
        if added:
            self.consumer.incremental_assign(added)
            log.warning("new partitions: %s; reading them from their beginning",
                        ", ".join(f"{tp.topic}[{tp.partition}]" for tp in added))

    def processed_offsets(self) -> list[TopicPartition]:
        """Where each input continues after what was handled: the consumer's position,
        except where messages are left for the next transaction (see Worker._step): there,
        the first of them. A partition not read from has no position yet: it stands where it
        was assigned (control's end, when there was no state), which must be committed too,
        or a command sent while the worker is down would be skipped after a restart."""
        positions = dict(self._assigned_at)  # where a partition not read from yet stands
        positions.update({(tp.topic, tp.partition): tp.offset
                          for consumer in (self.consumer, self.control_consumer)
                          for tp in consumer.position(consumer.assignment()) if tp.offset >= 0})
        first_left: dict[tuple[str, int], int] = {}
        for msg in self.leftover:
            if not msg.error():
                first_left.setdefault((msg.topic(), msg.partition()), msg.offset())
        positions.update(first_left)
        return [TopicPartition(t, p, o) for (t, p), o in positions.items()]
