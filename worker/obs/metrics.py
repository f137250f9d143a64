"""Prometheus metrics of one worker (ARCHITECTURE.md §6), in a registry of its own.

Counters and histograms move with the :class:`~worker.core.observer.Observer` hooks. The
two that move with every event (events served, handling time) are plain numbers exported
by a collector of their own: a ``prometheus_client`` Counter or Histogram takes a lock
per call, ~1.3 µs per event and ~0.7 µs per observation, a few per cent of the loop;
everything that is state (versions, per-model prequential metrics, pending buffers,
split, the test's e-value) is read from ``worker.engine.status()`` when scraped.

The consumer lag is the exception: it is sampled on the loop's thread (in
:meth:`PrometheusObserver.observe_batch`, at most once per :data:`LAG_EVERY_S`) and only
read by a scrape. confluent-kafka serialises calls on one Consumer across threads (2.16
waits for the other thread's ``consume()`` to return), so a scrape that asked the
consumer itself would wait on the loop, or starve behind it.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from worker.core.observer import Observer
from worker.core.types import LIFECYCLE_TYPES, LifecycleEvent

log = logging.getLogger("worker.obs")

ROLES = ("champion", "challenger", "previous")
VIEWS = ("cumulative", "window", "fading")
MODEL_METRICS = ("accuracy", "f1", "precision", "recall", "log_loss")
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)
CHECKPOINT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRANSACTION_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LAG_EVERY_S = 1.0


class PrometheusObserver(Observer):
    """The engine's and the run loop's hooks as Prometheus counters and histograms.

    ``worker`` is anything with ``engine`` and ``ready`` (and, for the lag, the
    ``_consumer`` of :class:`~worker.runtime.worker.Worker`); None exports no state.
    ``serves=False`` (a trainer, whose engine scores every event but serves none) keeps
    ``worker_events_total`` at 0, so that summing it over a scale-out deployment counts
    each event once: the scorers served it.
    """

    def __init__(self, worker: Any = None, serves: bool = True) -> None:
        self.worker = worker
        self.serves = serves
        self.port: int | None = None  # set by worker.obs.server.serve
        self.server: Any = None
        self.lag: list[tuple[str, int, int]] = []  # (topic, partition, messages), from the loop
        self._lag_at = -LAG_EVERY_S
        self.registry = r = CollectorRegistry()
        self._hot = _HotPath()
        self._bad = Counter("worker_bad_input_total", "Inputs refused by the engine (duplicate id, "
                            "the champion raised).", registry=r)
        self._dead_letters = Counter("worker_dead_letters_total", "Input messages written to the "
                                     "dead-letter topic.", registry=r)
        self._joined = Counter("worker_labels_joined_total", "Labels that came on their own (the labels "
                               "topic) matched with their event; every label learned, inline or not, "
                               "is in worker_labelled_events_total.", registry=r)
        self._evicted = Counter("worker_pending_evicted_total", "Pending entries dropped unmatched "
                                "(kind: predictions awaiting labels, labels awaiting events; reason: age, "
                                "they expired, capacity, the buffer was full, or late, a label that came "
                                "after its prediction was dropped).", ["kind", "reason"],
                                registry=r)
        self._lifecycle = Counter("worker_lifecycle_events_total", "Lifecycle events emitted, by type.",
                                  ["type"], registry=r)
        self._promotions = Counter("worker_promotions_total", "Challengers promoted to champion.",
                                   registry=r)
        self._rollbacks = Counter("worker_rollbacks_total", "Rollbacks to a former champion.", registry=r)
        self._drift = Counter("worker_drift_alarms_total", "Drift detector alarms, by model role.",
                              ["role"], registry=r)
        self._transaction = Histogram("worker_transaction_span_seconds", "Time from the first input "
                                      "handled in a transaction to its commit (exactly-once).",
                                      buckets=TRANSACTION_BUCKETS, registry=r)
        self._checkpoint = Histogram("worker_checkpoint_duration_seconds", "Time to write an engine "
                                     "snapshot with its offsets.", buckets=CHECKPOINT_BUCKETS, registry=r)
        for served_by in ("champion", "challenger"):  # every series exists from the start, at 0
            self._drift.labels(served_by)
        for kind, reason in (("predictions", "age"), ("predictions", "capacity"), ("labels", "age"),
                             ("labels", "capacity"), ("labels", "late")):
            self._evicted.labels(kind, reason)
        for kind in sorted(LIFECYCLE_TYPES):
            self._lifecycle.labels(kind)
        ProcessCollector(registry=r)
        r.register(self._hot)
        r.register(_StateCollector(self))

    # --- engine hooks --------------------------------------------------------------------

    def event_scored(self, served_by: str) -> None:
        if self.serves:
            self._hot.served[served_by] += 1

    def bad_input(self, reason: str) -> None:
        self._bad.inc()

    def label_joined(self) -> None:
        self._joined.inc()

    def pending_evicted(self, kind: str, reason: str, count: int) -> None:
        self._evicted.labels(kind, reason).inc(count)

    def lifecycle(self, event: LifecycleEvent) -> None:
        self._lifecycle.labels(event.type).inc()
        if event.type == "promoted":
            self._promotions.inc()
        elif event.type == "rolled_back":
            self._rollbacks.inc()
        elif event.type == "drift_detected":
            self._drift.labels(event.detail.get("role", "unknown")).inc()

    # --- runtime hooks -------------------------------------------------------------------

    def observe_batch(self, seconds: float, events: int) -> None:
        if events > 0:  # one observation per message: _sum is the time, _count the messages
            hot = self._hot
            hot.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds / events)] += events
            hot.latency_sum += seconds
        now = time.monotonic()
        if now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            self.lag = _read_lag(getattr(self.worker, "_consumer", None))

    def observe_transaction(self, seconds: float) -> None:
        self._transaction.observe(seconds)

    def observe_checkpoint(self, seconds: float) -> None:
        self._checkpoint.observe(seconds)

    def dead_letter(self) -> None:
        self._dead_letters.inc()


class _HotPath(Collector):
    """The per-event metrics as plain numbers, moved on the loop's thread and read by a
    scrape (an int or float assignment is atomic under the GIL)."""

    def __init__(self) -> None:
        self.served = {"champion": 0, "challenger": 0}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound
        self.latency_sum = 0.0

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        events = CounterMetricFamily("worker_events", "Events scored, by the model whose prediction "
                                     "was served.", labels=["served_by"])
        for served_by, n in self.served.items():
            events.add_metric([served_by], n)
        yield events
        buckets, total = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.latency_buckets, strict=True):
            total += n
            buckets.append((floatToGoString(bound), total))
        yield HistogramMetricFamily("worker_processing_latency_seconds", "Handling time per input "
                                    "message (a batch's time spread over its messages).",
                                    buckets=buckets, sum_value=self.latency_sum)


class _StateCollector(Collector):
    """Gauges read from the worker at scrape time (nothing while it is not ready)."""

    def __init__(self, observer: PrometheusObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        worker = self.observer.worker
        if worker is None or not getattr(worker, "ready", False):
            return
        engine = getattr(worker, "engine", None)
        if engine is None:  # a scorer: what it serves
            yield from _serving_gauges(worker.serving())
        elif (status := _status(engine)) is not None:
            yield from _engine_gauges(status)
        lag = GaugeMetricFamily("worker_consumer_lag_messages", "Messages not yet consumed (high "
                                "watermark - position), sampled about once a second.",
                                labels=["topic", "partition"])
        for topic, partition, messages in self.observer.lag:
            lag.add_metric([topic, str(partition)], messages)
        yield lag


def _status(engine: Any) -> dict | None:
    """``engine.status()``, read from the HTTP thread while the loop thread moves the
    engine on: a read that trips over a change in progress is simply tried again."""
    for attempt in range(3):
        try:
            return engine.status()
        except Exception:  # noqa: BLE001 - a torn read must not fail the scrape
            if attempt == 2:
                log.warning("could not read the engine status for a scrape", exc_info=True)
    return None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _versions(s: dict) -> GaugeMetricFamily:
    versions = GaugeMetricFamily("worker_model_version", "Version of the model in each role.",
                                 labels=["role"])
    for role in ROLES:
        if s.get(role) is not None:
            versions.add_metric([role], s[role])
    return versions


def _split(s: dict) -> GaugeMetricFamily:
    return _gauge("worker_split_percent", "Percent of entities served by the challenger.", s["split_percent"])


def _serving_gauges(s: dict) -> Iterator[GaugeMetricFamily]:
    """A scorer's: the versions it serves (its champion; its challenger under a split)."""
    yield _versions(s)
    yield _split(s)


def _engine_gauges(s: dict) -> Iterator[GaugeMetricFamily]:
    families = {m: GaugeMetricFamily(f"worker_model_{m}", f"Prequential {m} of the model in each role.",
                                     labels=["role", "version", "view"]) for m in MODEL_METRICS}
    for role in ROLES:
        version = s.get(role)
        if version is None:
            continue
        report = s["models"][role]["metrics"]
        for view in VIEWS:
            for m, family in families.items():
                family.add_metric([role, str(version), view], report[view][m])
    served = GaugeMetricFamily("worker_served_accuracy", "Prequential accuracy of the served predictions.",
                               labels=["view"])
    for view in VIEWS:
        served.add_metric([view], s["served"][view]["accuracy"])
    yield _versions(s)
    yield from families.values()
    yield served
    if s["arms"] is not None:  # since a split was first set: the A/B comparison of served traffic
        arms = {m: GaugeMetricFamily(f"worker_arm_{m}", f"Prequential {m} of the predictions each arm served "
                                     "(traffic split).", labels=["arm", "view"]) for m in MODEL_METRICS}
        for arm, report in s["arms"].items():
            for view in VIEWS:
                for m, family in arms.items():
                    family.add_metric([arm, view], report[view][m])
        yield from arms.values()
    counts, pending = s["counts"], s["pending"]
    # counters: they only go up while the engine's state lives (a restart restores them)
    kept = "since the engine's state began (kept across restarts)"
    yield CounterMetricFamily("worker_scored_events", f"Events scored {kept}.", value=counts["events"])
    yield CounterMetricFamily("worker_labelled_events", f"Labelled events learnt from {kept}.",
                              value=counts["labelled"])
    yield CounterMetricFamily("worker_refused_events", f"Inputs refused {kept}.", value=counts["bad"])
    yield CounterMetricFamily("worker_learn_errors", f"Times a model could not learn an event {kept}.",
                              value=counts["learn_errors"])
    yield CounterMetricFamily("worker_shadow_errors", f"Times the challenger or previous champion could not "
                              f"score an event the champion served {kept}.", value=counts["shadow_errors"])
    yield CounterMetricFamily("worker_challenger_resets", f"Challengers replaced {kept}.",
                              value=counts["resets"])
    yield _gauge("worker_pending_predictions", "Predictions waiting for their label.", pending["predictions"])
    yield _gauge("worker_pending_labels", "Labels waiting for their event.", pending["labels"])
    yield _split(s)
    yield _gauge("worker_learning", "1 while the models learn, 0 while paused.", 1 if s["learning"] else 0)
    if s["test"] is not None:
        yield _gauge("worker_test_e_value", "E-value of the challenger-vs-champion test.",
                     s["test"]["e_value"])
    if s["probation"] is not None:
        yield _gauge("worker_probation_e_value", "E-value of the previous-vs-new champion test.",
                     s["probation"]["e_value"])


def _read_lag(consumer: Any) -> list[tuple[str, int, int]]:
    """High watermark − position per assigned partition, from librdkafka's cache (no
    broker round trip); partitions with no known offsets yet are left out."""
    if consumer is None:
        return []
    try:
        positions = consumer.position(consumer.assignment())
        offsets = [(tp, consumer.get_watermark_offsets(tp, cached=True)) for tp in positions]
    except (KafkaException, RuntimeError):  # RuntimeError: the consumer is closed
        return []
    return [(tp.topic, tp.partition, max(high - tp.offset, 0))
            for tp, (_low, high) in offsets if tp.offset >= 0 and high >= 0]
