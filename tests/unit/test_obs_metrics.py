"""The Prometheus exporter: counters move with the engine, gauges read its state."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.types import Command, Event, Label
from worker.obs.metrics import PrometheusObserver
from worker.obs.server import serve


@dataclass
class Standin:
    """What the exporter reads of a Worker: its engine and whether it is ready."""

    engine: Any = None
    ready: bool = False


def scrape(observer: PrometheusObserver) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(observer.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def event(i: int, label: Any = "inline") -> Event:
    x = {"a": (i * 37 % 101) / 101, "b": (i * 53 % 97) / 97}
    return Event(id=f"e{i}", features=x, label=x["a"] > x["b"] if label == "inline" else label)


@pytest.fixture
def setup() -> tuple[Standin, PrometheusObserver, Engine]:
    worker = Standin()
    observer = PrometheusObserver(worker)
    worker.engine = Engine(EngineConfig(warmup_labels=50, policy="manual"), observer)
    worker.ready = True
    return worker, observer, worker.engine


def test_counters_move_with_events(setup):
    _, observer, engine = setup
    before = scrape(observer)
    assert value(before, "worker_events_total", served_by="champion") == 0
    assert value(before, "worker_labels_joined_total") == 0

    for i in range(30):
        engine.process(event(i))
    for i in range(30, 40):
        engine.process(event(i, label=None))
    for i in range(30, 35):
        engine.process_label(Label(id=f"e{i}", label=True))
    with pytest.raises(Exception, match="pending"):
        engine.process(event(39, label=None))  # its id is still pending: refused

    after = scrape(observer)
    assert value(after, "worker_events_total", served_by="champion") == 40
    assert value(after, "worker_labels_joined_total") == 5  # the 30 inline labels are not joins
    assert value(after, "worker_bad_input_total") == 1
    assert value(after, "worker_pending_predictions") == 5
    assert value(after, "worker_scored_events_total") == 40
    assert value(after, "worker_labelled_events_total") == 35
    assert value(after, "worker_learning") == 1
    assert value(after, "worker_model_version", role="champion") == 1
    assert value(after, "worker_model_version", role="challenger") is None  # still warming up
    accuracy = value(after, "worker_model_accuracy", role="champion", version="1", view="cumulative")
    assert 0 < accuracy <= 1
    assert value(after, "worker_served_accuracy", view="cumulative") == accuracy


def test_a_label_the_model_cannot_learn_is_a_learn_error_not_bad_input(setup):
    """The event was served: counted in worker_learn_errors_total only."""
    _, observer, engine = setup
    engine.process(event(0))
    engine.process(event(1, label="UP"))  # a string label: LogisticRegression cannot learn it
    samples = scrape(observer)
    assert value(samples, "worker_learn_errors_total") == 1
    assert value(samples, "worker_bad_input_total") == 0
    assert value(samples, "worker_events_total", served_by="champion") == 2


def test_versions_and_lifecycle_after_promote(setup):
    _, observer, engine = setup
    for i in range(60):
        engine.process(event(i))
    warm = scrape(observer)
    assert value(warm, "worker_model_version", role="champion") == 1
    assert value(warm, "worker_model_version", role="challenger") == 2
    assert value(warm, "worker_lifecycle_events_total", type="challenger_created") == 1
    assert value(warm, "worker_test_e_value") is not None

    engine.apply(Command(type="promote", command_id="p1"))
    promoted = scrape(observer)
    assert value(promoted, "worker_model_version", role="champion") == 2
    assert value(promoted, "worker_model_version", role="challenger") == 3
    assert value(promoted, "worker_model_version", role="previous") == 1
    assert value(promoted, "worker_promotions_total") == 1
    assert value(promoted, "worker_lifecycle_events_total", type="promoted") == 1
    assert value(promoted, "worker_lifecycle_events_total", type="command_applied") == 1
    assert value(promoted, "worker_model_f1", role="previous", version="1", view="window") is not None

    engine.apply(Command(type="rollback", command_id="r1"))
    assert value(scrape(observer), "worker_rollbacks_total") == 1
    assert value(scrape(observer), "worker_model_version", role="champion") == 1


def test_per_arm_metrics_once_a_split_is_set(setup):
    _, observer, engine = setup
    for i in range(60):
        engine.process(event(i))
    assert value(scrape(observer), "worker_arm_accuracy", arm="champion", view="cumulative") is None
    engine.apply(Command(type="set_split", command_id="s1", percent=50.0))
    served = []
    for i in range(60, 260):
        keyed = event(i)
        keyed.key = f"user-{i}"
        served.append(engine.process(keyed).served_by)
    samples = scrape(observer)
    assert value(samples, "worker_split_percent") == 50.0
    for arm in ("champion", "challenger"):
        report = engine.status()["arms"][arm]["cumulative"]
        assert report["n"] == served.count(arm) > 0
        assert value(samples, "worker_arm_accuracy", arm=arm, view="cumulative") == report["accuracy"]
        assert value(samples, "worker_arm_log_loss", arm=arm, view="window") is not None


def test_runtime_hooks(setup):
    _, observer, _ = setup
    observer.observe_batch(0.004, 4)
    observer.observe_batch(0.0, 0)
    observer.observe_checkpoint(0.02)
    observer.dead_letter()
    samples = scrape(observer)
    assert value(samples, "worker_processing_latency_seconds_count") == 4
    assert value(samples, "worker_processing_latency_seconds_sum") == pytest.approx(0.004)
    assert value(samples, "worker_processing_latency_seconds_bucket", le="0.001") == 4
    assert value(samples, "worker_checkpoint_duration_seconds_count") == 1
    assert value(samples, "worker_dead_letters_total") == 1


def test_no_state_gauges_until_ready(setup):
    worker, observer, _ = setup
    worker.ready = False
    samples = scrape(observer)
    assert value(samples, "worker_model_version", role="champion") is None
    assert value(samples, "worker_events_total", served_by="champion") == 0  # counters stay
    assert value(scrape(PrometheusObserver()), "worker_bad_input_total") == 0  # no worker at all


def test_evictions_are_counted_by_kind_and_reason():
    observer = PrometheusObserver()
    engine = Engine(EngineConfig(warmup_labels=50, pending_max=3, pending_ttl=10.0), observer)
    for i in range(5):  # the 4th and 5th push the 1st and 2nd out
        engine.process(Event(id=f"e{i}", features={"a": 1.0}, ts=100.0 + i))
    engine.process_label(Label(id="early", label=True, ts=104.0))
    for i, ts in enumerate((199.0, 200.0)):  # the clock is the earlier of the last two event times
        engine.process(Event(id=f"on-{i}", features={"a": 1.0}, label=True, ts=ts))
    engine.process(Event(id="late", features={"a": 1.0}, ts=201.0))  # e2-e4 expired: room for it
    samples = scrape(observer)
    assert value(samples, "worker_pending_evicted_total", kind="predictions", reason="capacity") == 2
    assert value(samples, "worker_pending_evicted_total", kind="predictions", reason="age") == 3
    assert value(samples, "worker_pending_evicted_total", kind="labels", reason="age") == 1
    assert value(samples, "worker_pending_evicted_total", kind="labels", reason="capacity") == 0


def test_a_trainer_counts_no_event_as_served():
    """In scale-out the scorers serve; a trainer's engine scores the same events again."""
    worker = Standin()
    observer = PrometheusObserver(worker, serves=False)
    worker.engine, worker.ready = Engine(EngineConfig(warmup_labels=50), observer), True
    for i in range(30):
        worker.engine.process(event(i))
    samples = scrape(observer)
    assert value(samples, "worker_events_total", served_by="champion") == 0
    assert value(samples, "worker_scored_events_total") == 30


def test_observers_do_not_share_a_registry():
    first, second = PrometheusObserver(), PrometheusObserver()
    first.dead_letter()
    assert value(scrape(first), "worker_dead_letters_total") == 1
    assert value(scrape(second), "worker_dead_letters_total") == 0


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_server_on_a_free_port(setup):
    worker, _, engine = setup
    worker.ready = False
    observer = serve(worker, 0)
    engine.observer = observer
    try:
        base = f"http://127.0.0.1:{observer.port}"
        assert observer.port > 0
        assert get(f"{base}/healthz")[::2] == (200, "ok\n")
        status, _, body = get(f"{base}/readyz")
        assert status == 503 and body.startswith("not ready: recovering")
        worker.ready = True
        assert get(f"{base}/readyz")[0] == 200
        engine.process(event(1))
        observer.observe_batch(0.001, 1)  # samples the lag too: the stand-in has no consumer
        status, content_type, body = get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["worker_events"].samples and families["worker_model_version"].samples
        assert families["worker_consumer_lag_messages"].samples == []
        assert get(f"{base}/nope")[0] == 404
    finally:
        observer.server.shutdown()
        observer.server.server_close()
