"""What a scorer's `ModelFeed` does with publications it cannot load, against the real
broker: it keeps serving what it has, does not read the whole `models` topic again and
again, and switches as soon as a good publication comes.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer
from river import linear_model

from tests.integration.harness import create_all_topics, wait_until
from worker.core.registry import ModelVersion
from worker.core.types import LifecycleEvent
from worker.io.codec import encode_lifecycle
from worker.io.models import model_messages
from worker.runtime import scorer
from worker.runtime.worker import RunSettings
from worker.settings import KafkaSettings

SECRET = b"feed secret"


def test_a_publication_that_cannot_be_loaded_is_tried_once_and_a_new_one_at_once(
        bootstrap, unique, monkeypatch):
    prefix = unique("feed") + "."
    create_all_topics(bootstrap, prefix, 1)
    kafka = KafkaSettings(bootstrap=bootstrap, group=f"{prefix}group", topic_prefix=prefix)
    producer = Producer({"bootstrap.servers": bootstrap})

    def publish(version: int, secret: bytes = SECRET) -> None:
        mv = ModelVersion(version, "linear_model.LogisticRegression", None, "test", 0, None,
                          linear_model.LogisticRegression())
        for key, value in model_messages(mv, secret, chunk_bytes=20_000, published_labelled=0):
            producer.produce(kafka.topics.models, key=key, value=value)
        assert producer.flush(30) == 0

    def champion(version: int) -> None:
        producer.produce(kafka.topics.control, encode_lifecycle(LifecycleEvent(
            type="promoted", command_id=None, champion=version, challenger=None, detail={}, split=0.0)))
        assert producer.flush(30) == 0

    reads = []
    read_models = scorer.read_models
    monkeypatch.setattr(scorer, "read_models", lambda *a, **kw: reads.append(1) or read_models(*a, **kw))
    publish(1)
    champion(1)
    feed = scorer.ModelFeed(RunSettings(kafka=kafka, secret=SECRET))
    try:
        feed.start()
        assert feed.champion.version == 1

        publish(2, secret=b"another secret")  # e.g. a trainer restarted with a new secret first
        producer.produce(kafka.topics.models, key=b"v3", value=b"not a manifest")  # not a worker's
        champion(2)
        wait_until(lambda: feed.poll() or "signature mismatch" in str(feed.champion_error), 60,
                   "the attempt to load v2")
        assert reads == [], "its chunks are all here: reading the topic again would not help"
        champion(3)
        wait_until(lambda: feed.poll() or "malformed manifest" in str(feed.champion_error), 60,
                   "the attempt to load v3")
        deadline = time.monotonic() + 3  # RETRY_S is 1 s: three more reads if it retried on a timer
        while time.monotonic() < deadline:
            feed.poll()
        assert len(reads) == 1, "one read of the topic (v3's chunks are not known), then it waits"
        assert feed.champion.version == 1, "it serves what it has meanwhile"

        publish(3)
        wait_until(lambda: feed.poll() or feed.champion.version == 3, 60, "v3, published anew")
    finally:
        feed.close()
