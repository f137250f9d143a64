"""A real `worker run --metrics-port` serves /metrics, /healthz and /readyz."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import (
    SECRET,
    WorkerProcess,
    create_all_topics,
    event,
    free_port,
    predicted_ids,
    produce,
    wait_until,
)


def get(url: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    reply = get(f"{base}/metrics")
    assert reply is not None and reply[0] == 200, reply
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply[1]) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_endpoint(bootstrap, unique, tmp_path):
    prefix = unique("metrics") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", "--metrics-port", str(port),
                           "--policy", "manual")
    try:
        wait_until(lambda: get(f"{base}/healthz") == (200, "ok\n"), 60, "/healthz")
        wait_until(lambda: get(f"{base}/readyz") == (200, "ok\n") or worker.proc.poll() is not None,
                   60, "/readyz")
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert f'"message": "metrics on port {port}"' in worker.log()
        assert value(scrape(base), "worker_events_total", served_by="champion") == 0
        assert value(scrape(base), "worker_model_version", role="champion") == 1

        produce(bootstrap, f"{prefix}events", (event(i) for i in range(200)))
        wait_until(lambda: value(scrape(base), "worker_events_total", served_by="champion") == 200,
                   60, "200 events counted")
        samples = scrape(base)
        assert value(samples, "worker_processing_latency_seconds_count") >= 200
        assert value(samples, "worker_model_version", role="challenger") is None  # warm-up: 500 labels

        def events_lag() -> dict[str, float]:
            lag = {}
            for (name, labels), v in scrape(base).items():
                labels = dict(labels)
                if name == "worker_consumer_lag_messages" and labels["topic"] == f"{prefix}events":
                    lag[labels["partition"]] = v
            return lag

        wait_until(lambda: events_lag() == {"0": 0, "1": 0}, 30, "no lag on either events partition")

        produce(bootstrap, f"{prefix}events", (event(i) for i in range(200, 700)))
        wait_until(lambda: value(scrape(base), "worker_events_total", served_by="champion") == 700,
                   60, "700 events counted")
        samples = scrape(base)
        assert value(samples, "worker_model_version", role="challenger") == 2
        assert value(samples, "worker_labelled_events_total") == 700
        wait_until(lambda: value(scrape(base), "worker_checkpoint_duration_seconds_count") >= 1,
                   30, "a snapshot to be timed")

        promote = subprocess.run(
            [sys.executable, "-m", "worker", "control", "promote", "--bootstrap", bootstrap,
             "--topic-prefix", prefix, "--secret", SECRET],
            capture_output=True, text=True, timeout=90)
        assert promote.returncode == 0, promote.stdout + promote.stderr

        def promoted() -> dict | None:
            samples = scrape(base)
            return samples if value(samples, "worker_promotions_total") == 1 else None

        samples = wait_until(promoted, 30, "the promotion to be counted")
        assert value(samples, "worker_model_version", role="champion") == 2
        assert value(samples, "worker_model_version", role="previous") == 1
        assert value(samples, "worker_model_version", role="challenger") == 3
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_input_replayed_after_a_crash_is_not_counted_again(bootstrap, unique, tmp_path):
    """A restarted worker replays what its last snapshot does not cover; the counters of
    the new process count only what it processes live."""
    prefix = unique("recount") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # one snapshot at the first commit, none after: everything later is replayed on restart
    args = ("--metrics-port", str(port), "--policy", "manual", "--snapshot-interval-s", "3600")
    first = WorkerProcess(bootstrap, prefix, tmp_path / "first.log", *args)
    try:
        wait_until(lambda: get(f"{base}/readyz") == (200, "ok\n") or first.proc.poll() is not None,
                   60, "the first worker ready")
        produce(bootstrap, f"{prefix}events", (event(i) for i in range(300)))
        wait_until(lambda: value(scrape(base), "worker_events_total", served_by="champion") == 300,
                   60, "300 events counted")
        # committed (not only handled) before the kill: the restart replays them all
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 300, 60, "300 predictions committed")
    finally:
        first.kill()
    second = WorkerProcess(bootstrap, prefix, tmp_path / "second.log", *args)
    try:
        wait_until(lambda: get(f"{base}/readyz") == (200, "ok\n") or second.proc.poll() is not None,
                   60, "the restarted worker ready")
        assert "recovered: replayed" in second.log(), second.log()[-3000:]
        assert value(scrape(base), "worker_events_total", served_by="champion") == 0
        produce(bootstrap, f"{prefix}events", (event(i) for i in range(300, 310)))
        wait_until(lambda: value(scrape(base), "worker_events_total", served_by="champion") == 10,
                   60, "the 10 new events counted")
        assert value(scrape(base), "worker_labelled_events_total") == 310  # the engine did replay them
    finally:
        assert second.stop() == 0, second.log()[-3000:]
